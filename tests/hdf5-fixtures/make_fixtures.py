"""Writes the small HDF5 files that src/hdf5.rs's unit tests read.

The Keras checkpoints in tests/golden-variants/keras/ cover what Keras 3 writes (h5py's
default, libver="earliest"). These files cover the rest of the reader: the newer format
(libver="latest": superblock v3, v2 object headers, link messages), float64, scalar, compact
and empty datasets, groups spread over several symbol table nodes, a cycle of hard links, and
each refusal (chunked, integer, big-endian, dense link storage, soft link). Run with h5py
(pip install h5py) from this folder; the values are fixed, so rerunning gives the same bytes.
"""

import h5py
import numpy as np


def compact(group, name, data):
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    dcpl.set_obj_track_times(False)  # as h5py's high-level API: the same bytes on every run
    space = h5py.h5s.create_simple(data.shape)
    ds = h5py.h5d.create(group.id, name.encode(), h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
    ds.write(h5py.h5s.ALL, h5py.h5s.ALL, data)


def supported(path, libver):
    with h5py.File(path, "w", libver=libver) as f:
        a = f.create_group("a")
        a.create_dataset("f32", data=(np.arange(6, dtype=np.float32) * 0.5 - 1.0).reshape(2, 3))
        a.create_group("b").create_dataset("f64", data=np.array([0.1, -2.0, 1e300, 3.25]))
        f.create_dataset("scalar", data=np.float32(2.5))
        compact(f, "compact", np.array([7.0, 8.0, 9.0], dtype=np.float32))
        f.create_dataset("zero", shape=(0, 4), dtype=np.float32)
        f.create_group("empty_group")
        f["a"].attrs["note"] = "attributes are skipped"


supported("earliest.h5", "earliest")
supported("latest.h5", "latest")

with h5py.File("chunked.h5", "w") as f:
    f.create_group("g").create_dataset("x", data=np.ones((4, 4), np.float32), chunks=(2, 2))

with h5py.File("int32.h5", "w") as f:
    f.create_group("g").create_dataset("x", data=np.arange(4, dtype=np.int32))

with h5py.File("big_endian.h5", "w") as f:
    f.create_dataset("x", data=np.arange(4, dtype=">f4"))

with h5py.File("dense.h5", "w", libver="latest") as f:
    g = f.create_group("g")
    for i in range(12):
        g.create_dataset(f"x{i}", data=np.float32(i))

with h5py.File("soft_link.h5", "w") as f:
    f.create_dataset("x", data=np.float32(1))
    f["y"] = h5py.SoftLink("/x")

with h5py.File("cycle.h5", "w") as f:
    f.create_dataset("x", data=np.float32(1))
    f.create_group("a")["up"] = f["/"]  # a hard link back to the root: a cycle

# Groups larger than one symbol table node (8 entries), and one whose B-tree has an inner level
# (more than 32 leaves): hard links to one dataset make its 300 entries cheap.
with h5py.File("wide.h5", "w") as f:
    w = f.create_group("w")
    for i in range(40):
        w.create_dataset(f"d{i:02}", data=np.float32(i))
    target = f.create_dataset("z_target", data=np.float32(-1))
    links = f.create_group("links")
    for i in range(300):
        links[f"l{i:03}"] = target
