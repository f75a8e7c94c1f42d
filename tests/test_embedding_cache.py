"""The embedding cache of a frozen encoder: exact hits, a miss for any change of input or weights, damage recomputed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from conftest import REPO, small_samsp

from samsp_monai.model.embedding_cache import EmbeddingCache


def frozen_net(cache_dir, **kwargs):
    return small_samsp(encoder_training="frozen", embedding_cache=cache_dir, **kwargs).eval()


def entries(cache_dir) -> list:
    return sorted(cache_dir.glob("*/*.pt"))


def test_a_hit_gives_exactly_what_the_encoder_gave_rounded_to_the_stored_dtype(tmp_path):
    net = frozen_net(tmp_path)
    x = net.preprocess(torch.rand(2, 1, 64, 64))
    with torch.no_grad():
        direct = net.sam.image_encoder(x)
        first, again = net.encode(x), net.encode(x)
    assert torch.equal(first, again) and torch.equal(first, direct.half().float())
    assert (net.embedding_cache.misses, net.embedding_cache.hits) == (2, 2) and len(entries(tmp_path)) == 2
    exact = EmbeddingCache(tmp_path / "fp32", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(exact(net.sam.image_encoder, x), direct)
        assert torch.equal(exact(net.sam.image_encoder, x), direct)


def test_a_changed_image_flip_preprocessing_or_weights_file_is_a_miss(tmp_path):
    net = frozen_net(tmp_path)
    image = torch.rand(1, 1, 64, 48)
    with torch.no_grad():
        net(image)
        assert net.embedding_cache.misses == 1
        net(image)
        assert net.embedding_cache.misses == 1
        changed = image.clone()
        changed[..., 3, 3] += 0.01
        net(changed)
        net(image.flip(-1))
        assert net.embedding_cache.misses == 3
        other_geometry = frozen_net(tmp_path, geometry="sam")
        other_geometry.load_state_dict(net.state_dict())
        other_geometry(image)
        assert other_geometry.embedding_cache.misses == 1
        net.sam.image_encoder.neck[0].weight.add_(0.001)  # other weights: never the old embedding
        net(image)
        assert net.embedding_cache.misses == 4
    assert len(entries(tmp_path)) == 5


def test_a_damaged_entry_is_recomputed_never_read(tmp_path):
    net = frozen_net(tmp_path)
    x = net.preprocess(torch.rand(1, 1, 64, 64))
    with torch.no_grad():
        good = net.encode(x)
        (entry,) = entries(tmp_path)
        for damage in (entry.read_bytes()[:100], b"", b"not a torch file"):
            entry.write_bytes(damage)
            fresh = frozen_net(tmp_path)
            fresh.load_state_dict(net.state_dict())
            assert torch.equal(fresh.encode(x), good)
            assert (fresh.embedding_cache.damaged, fresh.embedding_cache.misses) == (1, 1)
        stored = torch.load(entry, weights_only=True)
        torch.save({**stored, "embedding": stored["embedding"] + 1}, entry)  # loads, but fails its checksum
        fresh = frozen_net(tmp_path)
        fresh.load_state_dict(net.state_dict())
        assert torch.equal(fresh.encode(x), good) and fresh.embedding_cache.damaged == 1


def test_a_trainable_encoder_bypasses_the_cache(tmp_path):
    net = small_samsp(encoder_training="full", embedding_cache=tmp_path)
    net(torch.rand(1, 1, 64, 64))
    assert net.embedding_cache.misses == 0 and not entries(tmp_path)


def test_two_processes_filling_one_cache_agree_and_leave_no_temporary_files(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(REPO / "tests")!r})
        from conftest import small_samsp
        torch.manual_seed(0)
        net = small_samsp(encoder_training="frozen", embedding_cache={str(tmp_path)!r}).eval()
        x = torch.rand(4, 1, 64, 64)
        with torch.no_grad():
            for _ in range(2):
                embedding = net.encode(net.preprocess(x))
        torch.save(embedding, sys.argv[1])
        """
    )
    outputs = [tmp_path / f"out{i}.pt" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(out)], cwd=REPO) for out in outputs]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert torch.equal(torch.load(outputs[0]), torch.load(outputs[1]))
    assert len(entries(tmp_path)) == 4 and not list(tmp_path.glob("*/.*.tmp"))
