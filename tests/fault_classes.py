"""Where things are in an HDF5 file, for fault campaigns (tests/test_integrity.py and
benchmarks/fault_campaign.py; not collected by pytest itself)."""

import h5py


def hdf5_position_classes(path) -> dict[str, list[int]]:
    """Byte offsets of ``path`` by what HDF5 keeps there."""
    data = open(path, "rb").read()
    classes = {"superblock": list(range(0, 96)), "object header": [], "name": [], "heap": [], "attribute": [],
               "checksum": [], "chunk": []}

    def visit(name, obj):
        info = h5py.h5o.get_info(obj.id)
        size = getattr(getattr(getattr(info, "hdr", None), "space", None), "total", 0) or 64
        classes["object header"] += list(range(info.addr, min(info.addr + size, len(data))))
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
