"""Where things are in an HDF5 file, for fault campaigns (tests/test_integrity.py and
benchmarks/fault_campaign.py; not collected by pytest itself), and :func:`reseal`, to reach the
checks behind a file's digest."""

import h5py

from gaugeflow.lattice.ensemble_format import _with_digest


def hdf5_position_classes(path) -> dict[str, list[int]]:
    """Byte offsets of ``path`` by what HDF5 keeps there (and the user block, where gaugeflow
    keeps the file's digest)."""
    data = open(path, "rb").read()
    with h5py.File(path, "r") as f:
        base = f.userblock_size  # HDF5's addresses count from the superblock, after the user block
    classes = {"user block": list(range(0, base)), "superblock": list(range(base, base + 96)), "object header": [],
               "name": [], "heap": [], "attribute": [], "checksum": [], "chunk": []}

    def visit(name, obj):
        info = h5py.h5o.get_info(obj.id)
        size = getattr(getattr(getattr(info, "hdr", None), "space", None), "total", 0) or 64
        classes["object header"] += list(range(base + info.addr, min(base + info.addr + size, len(data))))
        if isinstance(obj, h5py.Dataset) and obj.chunks is not None and not obj.is_virtual:
            for index in range(obj.id.get_num_chunks()):
                chunk = obj.id.get_chunk_info(index)
                classes["chunk"] += list(range(chunk.byte_offset, chunk.byte_offset + chunk.size - 4))
                classes["checksum"] += list(range(chunk.byte_offset + chunk.size - 4, chunk.byte_offset + chunk.size))
        for key, value in obj.attrs.items():
            classes["attribute"] += occurrences(data, key.encode(), 24)
            if key.endswith("sha256"):
                classes["checksum"] += occurrences(data, str(value).encode() if not isinstance(value, bytes) else value, 0)

    with h5py.File(path, "r") as f:
        visit("/", f)
        f.visititems(visit)
        names = {part for name in all_names(f) for part in name.split("/")}
    for name in names:
        classes["name"] += occurrences(data, name.encode(), 0)
    for signature in (b"HEAP", b"GCOL", b"TREE", b"SNOD"):
        classes["heap"] += occurrences(data, signature, 40)
    return {k: sorted(set(v)) for k, v in classes.items() if v}


def all_names(f):
    names = []
    f.visit(names.append)
    return names


def occurrences(data: bytes, needle: bytes, after: int) -> list[int]:
    out, start = [], data.find(needle)
    while needle and start >= 0:
        out += list(range(start, min(start + len(needle) + after, len(data))))
        start = data.find(needle, start + 1)
    return out


def flip(path, offset: int, mask: int) -> None:
    """XOR the byte at ``offset`` of the file ``path`` with ``mask``, in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def reseal(path) -> None:
    """Write the digest of ``path``'s present bytes into its user block, as if its writer had
    damaged them before sealing: what a test needs to reach the checks behind the file digest
    (the datasets' checksums, the metadata digests, the resume state), which guard files
    written before digests and damage done before the digest was taken."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(_with_digest(data))
