"""ILDG files: gauge configurations that other lattice codes read and write.

An ILDG file (International Lattice Data Grid; the format of Chroma, Grid, openQCD's and MILC's
converters, tmLQCD, QIO/QDP++) is a LIME file: a sequence of records, each a 144-byte
big-endian header -- magic number ``0x456789ab``, LIME version 1, the message-begin (MB,
bit 15) and message-end (ME, bit 14) flags, the data length as uint64 and the record type
as a NUL-padded 128-byte string -- followed by the data, padded with zeros to a multiple
of 8 bytes.  gaugeflow writes one message of these records:

``ildg-format``
    XML ``<ildgFormat>`` with ``<version>1.0</version>``, ``<field>``, ``<precision>`` (64
    or 32 bits per real number) and the lattice extents ``<lx> <ly> <lz> <lt>``.
``gaugeflow-info``
    XML ``<gaugeflowInfo>``: theory, couplings, lattice, average plaquette, and the ensemble,
    row, chain and trajectory the configuration came from (other codes skip unknown records).
``gaugeflow-u1-angles``
    U(1) only, 64-bit files only: the angles ``theta`` as big-endian float64 in the order of
    the links, since ``exp(i theta)`` in double precision fixes ``theta`` only to an ulp (some
    angles share their cosine and sine with a neighbouring double).  Read back only where
    ``torch.polar`` of them gives the file's links bit for bit.
``ildg-data-lfn``
    The logical file name, by default ``lfn://gaugeflow/<ensemble>/<file>``.
``ildg-binary-data``
    The links, big-endian complex numbers (real, imaginary), site-major: the site index runs
    with ``x`` fastest and ``t`` slowest, and each site holds its links ``U_mu(x)`` for
    ``mu = 0, ..., D-1`` (``x, y, z, t``), each an ``N x N`` matrix in row-major order.
``scidac-checksum``
    XML ``<scidacChecksum>`` with ``<suma>`` and ``<sumb>`` in hexadecimal: with ``c(r)`` the
    CRC-32 (zlib's) of the bytes of the site of lexicographic rank ``r`` as stored,
    ``suma = XOR_r rotl32(c(r), r % 29)`` and ``sumb = XOR_r rotl32(c(r), r % 31)``.

Conventions.  gaugeflow stores links as ``[mu, x_0, ..., x_{D-1}, (N, N)]`` with time last
(:mod:`gaugeflow.lattice.gauge`), with the plaquette ``U_mu(x) U_nu(x+mu) U_mu(x+nu)^dagger
U_nu(x)^dagger`` as in Chroma, MILC and Grid, so the file's array is the transpose to
``[x_{D-1}, ..., x_0, mu, N, N]``.  Field names: ``su3gauge`` (the ILDG standard's), ``su2gauge`` and, for U(1), ``u1gauge``
with each link ``exp(i theta)`` stored as a ``1 x 1`` complex matrix (gaugeflow's names for
what the standard leaves open).  The extents of a 4D lattice are ``lx ly lz lt``; a 3D
lattice has ``lx ly lt`` and a 2D one ``lx lt`` (gaugeflow's extension: the standard knows only
4D).  Reading accepts any record order, several messages, unknown records and whitespace or
trailing NULs in the XML (as tmLQCD and QIO write them); the checksum must be there and
match (``require_checksum=False`` reads files of codes that write none).

A round trip in double precision is bit-exact: SU(N) links are written and read as they are;
U(1) angles ``theta`` come back from the record ``gaugeflow-u1-angles`` (``exp(i theta)``
alone fixes ``theta`` only to an ulp), other codes' U(1) files from ``atan2`` of their links.

Why hand-written LIME code: of the Python packages on PyPI, ``lyncs_io`` (0.2.3) reads LIME
but no longer imports with NumPy 2 (``numpy.lib.format._check_version`` is gone), writes no
``ildg-format`` record and no checksum, and knows only ``su3gauge``; ``lyncs_clime`` wraps
USQCD's c-lime but downloads its sources from GitHub while building, so it does not install
on a machine that reaches only the package registries.  LIME itself is a 144-byte header and
padding (:func:`lime_records`, :func:`lime_image`), smaller than an adapter to either would
be.  The tests check the reader against a file written by tmLQCD with c-lime and the
checksum against an independent implementation of the SciDAC specification.

Example::

    >>> import torch
    >>> from gaugeflow.lattice import make_theory
    >>> from gaugeflow.lattice.ildg import load_configuration, save_configuration
    >>> theory = make_theory("su3", "4x4x4x4", beta=6.0)
    >>> links = theory.hot_start(1, generator=torch.Generator().manual_seed(1))[0]
    >>> suma, sumb = save_configuration(theory, links, "conf.ildg")  # the SciDAC checksum
    >>> bool((load_configuration(theory, "conf.ildg") == links).all())
    True

References: ILDG Metadata Working Group, "ILDG binary file format" (ildg-format, 2006);
USQCD SciDAC "LIME" and QIO documentation (record layout, ``DML_checksum``).
"""

from __future__ import annotations

import math
import os
import re
import struct
import xml.etree.ElementTree as ElementTree
import zlib
from dataclasses import dataclass, field as dataclass_field
from typing import BinaryIO, Iterable, Sequence

import numpy as np
import torch

from .errors import InputError
from .fields import AngleField, SUNField
from .geometry import format_lattice_shape
from .storage import describe_os_error, write_atomically

__all__ = [
    "IldgConfiguration",
    "IldgError",
    "LimeRecord",
    "export_ensemble",
    "ildg_field_name",
    "lime_image",
    "lime_records",
    "load_configuration",
    "parse_selection",
    "read_ildg",
    "save_configuration",
    "scidac_checksum",
    "start_configuration",
    "write_ildg",
]

LIME_MAGIC = 0x456789AB
LIME_VERSION = 1
LIME_HEADER = struct.Struct(">IHHQ128s")  # magic, version, MB/ME flags, data length, type
MESSAGE_BEGIN, MESSAGE_END = 1 << 15, 1 << 14
FORMAT_RECORD, DATA_RECORD = "ildg-format", "ildg-binary-data"
CHECKSUM_RECORD, LFN_RECORD, INFO_RECORD = "scidac-checksum", "ildg-data-lfn", "gaugeflow-info"
SPATIAL_EXTENTS = ("lx", "ly", "lz")  # then lt: the extents of a lattice of dimension 2, 3 or 4
PRECISIONS = {64: np.dtype(">c16"), 32: np.dtype(">c8")}
# largest |U U^dagger - 1|, |det U - 1| (or ||z| - 1|) accepted in a file of each precision
GROUP_TOLERANCE = {64: 1e-10, 32: 1e-5}
_XML = '<?xml version="1.0" encoding="UTF-8"?>'
_LARGE_RECORD = 1 << 20  # records longer than this are not read unless asked for


class IldgError(InputError):
    """A file that is not a valid ILDG file, is damaged, or does not fit the theory."""


# -- LIME ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LimeRecord:
    """One LIME record: its type, where its data starts in the file, its length and flags."""

    type: str
    offset: int
    length: int
    begin: bool
    end: bool


def lime_records(stream: BinaryIO, name: str = "file") -> list[LimeRecord]:
    """The records of the LIME file open in ``stream`` (binary, seekable), in file order.

    Raises :class:`IldgError` for a bad magic number or version, or a record that runs past the
    end of the file (a truncated file)."""
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    records, position = [], 0
    while position < size:
        stream.seek(position)
        header = stream.read(LIME_HEADER.size)
        if len(header) < LIME_HEADER.size:
            raise IldgError(f"{name}: truncated LIME record header at byte {position}")
        magic, version, flags, length, kind = LIME_HEADER.unpack(header)
        if magic != LIME_MAGIC:
            what = "not a LIME/ILDG file" if position == 0 else "damaged LIME file"
            raise IldgError(f"{name}: {what} (magic number {magic:#010x} at byte {position}, not {LIME_MAGIC:#010x})")
        if version != LIME_VERSION:
            raise IldgError(f"{name}: LIME version {version} at byte {position}; this reader knows version "
                            f"{LIME_VERSION}")
        start = position + LIME_HEADER.size
        if start + length > size:
            raise IldgError(f"{name}: record at byte {position} claims {length} bytes but the file ends after "
                            f"{size - start} (truncated)")
        records.append(LimeRecord(kind.split(b"\0", 1)[0].decode("ascii", "replace"), start, length,
                                  bool(flags & MESSAGE_BEGIN), bool(flags & MESSAGE_END)))
        position = start + length + (-length % 8)
    return records


def lime_image(records: Sequence[tuple[str, bytes]]) -> bytes:
    """The bytes of a LIME file holding ``records`` (``(type, data)`` pairs) as one message."""
    parts = []
    for index, (kind, data) in enumerate(records):
        name = kind.encode("ascii")
        if len(name) > 128:
            raise InputError(f"LIME record type {kind!r} is longer than 128 bytes")
        flags = (MESSAGE_BEGIN if index == 0 else 0) | (MESSAGE_END if index == len(records) - 1 else 0)
        data = bytes(data)
        parts += [LIME_HEADER.pack(LIME_MAGIC, LIME_VERSION, flags, len(data), name), data, b"\0" * (-len(data) % 8)]
    return b"".join(parts)


# -- SciDAC checksum ----------------------------------------------------------------------------
def scidac_checksum(binary, volume: int) -> tuple[int, int]:
    """``(suma, sumb)`` of ``binary``, the site-major data of ``volume`` sites (SciDAC/QIO
    ``DML_checksum``): the CRC-32 ``c`` of each site's bytes, rotated left by ``rank % 29``
    (``suma``) and ``rank % 31`` (``sumb``) as 32-bit words, all XORed."""
    view = memoryview(binary).cast("B")
    if volume < 1 or len(view) % volume:
        raise InputError(f"{len(view)} bytes do not split into {volume} sites")
    step = len(view) // volume
    crc = np.fromiter((zlib.crc32(view[s:s + step]) for s in range(0, len(view), step)), dtype=np.uint64,
                      count=volume)
    rank = np.arange(volume, dtype=np.uint64)

    def folded(period: int) -> int:
        shift = rank % np.uint64(period)
        rotated = ((crc << shift) | (crc >> (np.uint64(32) - shift))) & np.uint64(0xFFFFFFFF)
        return int(np.bitwise_xor.reduce(rotated))

    return folded(29), folded(31)


# -- ILDG files ---------------------------------------------------------------------------------
@dataclass
class IldgConfiguration:
    """What :func:`read_ildg` found: ``links`` in gaugeflow's order ``[mu, x_0, ..., x_{D-1},
    N, N]`` (complex128), the field name, the precision in bits, the lattice extents (time
    last), the logical file name, the checksum ``(suma, sumb)`` and the other small records by
    type (e.g. ``gaugeflow-info``, tmLQCD's ``xlf-info``)."""

    links: np.ndarray
    field: str
    precision: int
    lattice_shape: tuple[int, ...]
    lfn: str | None = None
    checksum: tuple[int, int] | None = None
    records: dict[str, bytes] = dataclass_field(default_factory=dict)


def _extent_names(dimension: int) -> list[str]:
    if not 2 <= dimension <= 4:
        raise IldgError(f"ILDG files hold lattices of 2 to 4 dimensions, not {dimension}")
    return [*SPATIAL_EXTENTS[: dimension - 1], "lt"]


def _format_xml(field: str, precision: int, lattice_shape) -> bytes:
    extents = "".join(f"<{n}>{int(e)}</{n}>" for n, e in zip(_extent_names(len(lattice_shape)), lattice_shape))
    return (f'{_XML}<ildgFormat xmlns="http://www.lqcd.org/ildg" '
            f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xsi:schemaLocation="http://www.lqcd.org/ildg http://www.lqcd.org/ildg/filefmt.xsd">'
            f"<version>1.0</version><field>{field}</field><precision>{precision}</precision>{extents}"
            f"</ildgFormat>").encode()


def _checksum_xml(suma: int, sumb: int) -> bytes:
    return (f"{_XML}<scidacChecksum><version>1.0</version><suma>{suma:08x}</suma><sumb>{sumb:08x}</sumb>"
            f"</scidacChecksum>").encode()


def _xml_fields(data: bytes, what: str, name: str) -> dict[str, str]:
    """``{tag: text}`` of the children of an XML record's root, namespaces dropped."""
    text = data.rstrip(b"\0 \t\r\n")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise IldgError(f"{name}: the {what} record is not well-formed XML ({error})") from None
    return {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in root}


def _file_order(links: np.ndarray) -> np.ndarray:
    """``[mu, x_0, ..., x_{D-1}, N, N]`` -> ``[x_{D-1}, ..., x_0, mu, N, N]`` (site-major, x fastest)."""
    d = links.ndim - 3
    return links.transpose(*range(d, 0, -1), 0, d + 1, d + 2)


def _gaugeflow_order(data: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_file_order`."""
    d = data.ndim - 3
    return data.transpose(d, *range(d - 1, -1, -1), d + 1, d + 2)


def write_ildg(path, links, *, field: str, precision: int = 64, lfn: str | None = None,
               extra_records: Iterable[tuple[str, bytes]] = ()) -> tuple[int, int]:
    """Write ``links`` (``[mu, x_0, ..., x_{D-1}, N, N]`` complex, time last) to the ILDG file
    ``path`` under the field name ``field``; returns the SciDAC checksum ``(suma, sumb)``.

    Goes through :func:`~gaugeflow.lattice.storage.write_atomically` (a full disk leaves no
    partial file) and never overwrites: an existing ``path`` is an :class:`IldgError`."""
    path = os.fspath(path)
    links = np.asarray(links)
    if links.ndim < 5 or links.shape[0] != links.ndim - 3 or links.shape[-1] != links.shape[-2]:
        raise InputError(f"links must be [D, L_0, ..., L_(D-1), N, N] with D = the number of extents, "
                         f"got {links.shape}")
    if precision not in PRECISIONS:
        raise InputError(f"ILDG precision is 32 or 64 bits, not {precision}")
    lattice_shape = links.shape[1:-2]
    if os.path.exists(path):
        raise IldgError(f"{path} already exists; refusing to overwrite it")
    binary = np.ascontiguousarray(_file_order(links), dtype=PRECISIONS[precision]).tobytes()
    suma, sumb = scidac_checksum(binary, math.prod(lattice_shape))
    records = [(FORMAT_RECORD, _format_xml(field, precision, lattice_shape)), *extra_records]
    records += [(LFN_RECORD, (lfn or f"lfn://gaugeflow/{os.path.basename(path)}").encode()), (DATA_RECORD, binary),
                (CHECKSUM_RECORD, _checksum_xml(suma, sumb))]
    write_atomically(path, lime_image(records))
    return suma, sumb


def _one(records: dict[str, list[LimeRecord]], kind: str, name: str) -> LimeRecord | None:
    found = records.get(kind, [])
    if len(found) > 1:
        raise IldgError(f"{name} holds {len(found)} {kind} records; gaugeflow reads files of one configuration")
    return found[0] if found else None


def _read(stream: BinaryIO, record: LimeRecord) -> bytes:
    stream.seek(record.offset)
    return stream.read(record.length)


def _format_of(data: bytes, name: str) -> tuple[str, int, tuple[int, ...]]:
    fields = _xml_fields(data, FORMAT_RECORD, name)
    try:
        field, precision = fields["field"], int(fields["precision"])
        names = [n for n in (*SPATIAL_EXTENTS, "lt") if n in fields]
        if "lx" not in names or "lt" not in names:
            raise KeyError("lx, lt")
        shape = tuple(int(fields[n]) for n in names)
    except KeyError as missing:
        raise IldgError(f"{name}: the {FORMAT_RECORD} record lacks {missing}") from None
    except ValueError:
        raise IldgError(f"{name}: the {FORMAT_RECORD} record has a non-integer precision or extent") from None
    if precision not in PRECISIONS:
        raise IldgError(f"{name}: precision {precision}; ILDG files have 32 or 64")
    if min(shape) < 1:
        raise IldgError(f"{name}: lattice {format_lattice_shape(shape)} has a non-positive extent")
    return field, precision, shape


def _matrix_size(field: str, shape, length: int, precision: int, name: str) -> int:
    """``N`` from the data length: ``V * D * N^2`` complex numbers of ``precision`` bits."""
    per_matrix, rest = divmod(length, math.prod(shape) * len(shape) * PRECISIONS[precision].itemsize)
    n = math.isqrt(per_matrix)
    if rest or n * n != per_matrix or n < 1:
        raise IldgError(f"{name}: {length} bytes of binary data do not hold {len(shape)} {field} links on each site "
                        f"of {format_lattice_shape(shape)} in {precision}-bit precision (truncated or foreign)")
    expected = _group_size(field)
    if expected is not None and expected != n:
        raise IldgError(f"{name}: field {field} with {n}x{n} matrices (expected {expected}x{expected})")
    return n


def _group_size(field: str) -> int | None:
    match = re.fullmatch(r"su(\d+)gauge", field)
    return int(match.group(1)) if match else 1 if field == "u1gauge" else None


def read_ildg(path, *, require_checksum: bool = True) -> IldgConfiguration:
    """Read the ILDG file ``path``: its links in gaugeflow's order and what describes them.

    The SciDAC checksum is verified; a file without one is refused unless
    ``require_checksum=False``.  Every problem is one :class:`IldgError` naming the file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            records: dict[str, list[LimeRecord]] = {}
            for record in lime_records(stream, path):
                records.setdefault(record.type, []).append(record)
            fmt, data = _one(records, FORMAT_RECORD, path), _one(records, DATA_RECORD, path)
            if fmt is None or data is None:
                missing = " and ".join(k for k, r in ((FORMAT_RECORD, fmt), (DATA_RECORD, data)) if r is None)
                raise IldgError(f"{path}: no {missing} record (a LIME file, but not an ILDG gauge configuration)")
            field, precision, shape = _format_of(_read(stream, fmt), path)
            n = _matrix_size(field, shape, data.length, precision, path)
            binary = _read(stream, data)
            small = {kind: _read(stream, found[0]) for kind, found in records.items()
                     if len(found) == 1 and kind != DATA_RECORD and found[0].length <= _LARGE_RECORD}
    except FileNotFoundError:
        raise IldgError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise IldgError(f"{path}: is a directory, not an ILDG file") from None
    except OSError as error:
        raise IldgError(f"cannot read {path}: {describe_os_error(error)}") from None
    checksum = None
    if CHECKSUM_RECORD in small:
        checksum = _verify_checksum(small[CHECKSUM_RECORD], binary, math.prod(shape), path)
    elif require_checksum:
        raise IldgError(f"{path}: no {CHECKSUM_RECORD} record, so the data cannot be verified")
    values = np.frombuffer(binary, dtype=PRECISIONS[precision]).reshape(*shape[::-1], len(shape), n, n)
    links = np.ascontiguousarray(_gaugeflow_order(values), dtype=np.complex128)
    lfn = small[LFN_RECORD].rstrip(b"\0").decode("utf-8", "replace").strip() if LFN_RECORD in small else None
    return IldgConfiguration(links, field, precision, shape, lfn, checksum, small)


def _verify_checksum(data: bytes, binary: bytes, volume: int, path: str) -> tuple[int, int]:
    fields = _xml_fields(data, CHECKSUM_RECORD, path)
    try:
        stored = int(fields["suma"], 16), int(fields["sumb"], 16)
    except (KeyError, ValueError):
        raise IldgError(f"{path}: the {CHECKSUM_RECORD} record has no hexadecimal suma and sumb") from None
    computed = scidac_checksum(binary, volume)
    if computed != stored:
        raise IldgError(f"{path}: scidac-checksum mismatch (suma/sumb stored {stored[0]:08x}/{stored[1]:08x}, computed "
                        f"{computed[0]:08x}/{computed[1]:08x}): the binary data is damaged")
    return computed


# -- configurations of a theory -----------------------------------------------------------------
class _U1Links:
    """U(1) angles ``theta`` <-> ``1 x 1`` matrices ``exp(i theta)`` (field ``u1gauge``).

    ``exp(i theta)`` in double precision does not determine ``theta`` bit for bit (some
    angles share their cosine and sine with a neighbouring double), so a 64-bit file also holds
    the angles themselves, big-endian float64 in the order of the links, in the record
    ``gaugeflow-u1-angles``; they are used only where ``torch.polar`` of them gives exactly the
    file's links (otherwise, e.g. in a file another code changed, the links' ``atan2``)."""

    record = "gaugeflow-u1-angles"

    @staticmethod
    def name(theory) -> str:
        return "u1gauge"

    @staticmethod
    def to_links(theory, config: torch.Tensor) -> torch.Tensor:
        return theory.links_as_matrices(config[None])[0]

    @classmethod
    def extra_records(cls, config: torch.Tensor, precision: int) -> list[tuple[str, bytes]]:
        if precision != 64:
            return []
        angles = _file_order(config.numpy()[..., None, None])
        return [(cls.record, np.ascontiguousarray(angles, dtype=">f8").tobytes())]

    @classmethod
    def from_links(cls, links: torch.Tensor, found: IldgConfiguration, tolerance: float, name: str) -> torch.Tensor:
        phases = links[..., 0, 0]
        off = (phases.abs() - 1).abs().max().item() if phases.numel() else 0.0
        if not off <= tolerance:
            raise IldgError(f"{name}: a U(1) link has |U| - 1 = {off:.2g}: not a U(1) configuration")
        stored = found.records.get(cls.record)
        if stored is not None and len(stored) == phases.numel() * 8:
            shape = (*found.lattice_shape[::-1], len(found.lattice_shape), 1, 1)
            angles = np.frombuffer(stored, dtype=">f8").reshape(shape)
            angles = torch.from_numpy(np.ascontiguousarray(_gaugeflow_order(angles)[..., 0, 0], dtype=np.float64))
            if bool((torch.polar(torch.ones_like(angles), angles) == phases).all()):
                return angles
        return torch.angle(phases)


class _SUNLinks:
    """SU(N) matrices as they are (field ``suNgauge``)."""

    @staticmethod
    def name(theory) -> str:
        return f"su{theory.field.n_colors}gauge"

    @staticmethod
    def to_links(theory, config: torch.Tensor) -> torch.Tensor:
        return config

    @staticmethod
    def extra_records(config: torch.Tensor, precision: int) -> list[tuple[str, bytes]]:
        return []

    @staticmethod
    def from_links(links: torch.Tensor, found: IldgConfiguration, tolerance: float, name: str) -> torch.Tensor:
        eye = torch.eye(links.shape[-1], dtype=links.dtype)
        unitarity = (links @ links.conj().transpose(-1, -2) - eye).abs().max().item()
        determinant = (torch.linalg.det(links) - 1).abs().max().item()
        if not max(unitarity, determinant) <= tolerance:
            raise IldgError(f"{name}: a link is off SU({links.shape[-1]}) by {max(unitarity, determinant):.2g} "
                            f"(|U U^dagger - 1| {unitarity:.2g}, |det U - 1| {determinant:.2g})")
        return links


_LINKS_OF_FIELD = {AngleField: _U1Links, SUNField: _SUNLinks}  # by field type; subclasses inherit


def _links_of(theory):
    for cls in type(getattr(theory, "field", None)).__mro__:
        if cls in _LINKS_OF_FIELD and getattr(theory, "is_gauge_theory", False):
            return _LINKS_OF_FIELD[cls]
    raise IldgError(f"ILDG files hold gauge links; theory {theory.name} has none")


def ildg_field_name(theory) -> str:
    """The ILDG field name of ``theory``'s links: ``su3gauge``, ``su2gauge`` or ``u1gauge``."""
    return _links_of(theory).name(theory)


def _info_xml(theory, plaquette: float, info: dict) -> bytes:
    items = {"theory": theory.name, "lattice": format_lattice_shape(theory.lattice_shape),
             **{name: repr(float(value)) for name, value in theory.couplings.items()},
             "plaquette": repr(plaquette), **{k: v for k, v in info.items() if v is not None}}
    root = ElementTree.Element("gaugeflowInfo")
    for key, value in items.items():
        ElementTree.SubElement(root, key).text = str(value)
    return _XML.encode() + ElementTree.tostring(root)


def save_configuration(theory, config, path, *, precision: int = 64, lfn: str | None = None,
                       info: dict | None = None) -> tuple[int, int]:
    """Write one configuration of ``theory`` (``theory.config_shape``, e.g. U(1) angles or SU(N)
    links) to the ILDG file ``path``; ``info`` adds entries to the ``gaugeflow-info`` record.
    Returns the SciDAC checksum; never overwrites."""
    from . import gauge

    codec = _links_of(theory)
    config = torch.as_tensor(config)
    if tuple(config.shape) != tuple(theory.config_shape):
        raise InputError(f"a configuration of {theory.name} on {format_lattice_shape(theory.lattice_shape)} has shape "
                         f"{list(theory.config_shape)}, not {list(config.shape)}")
    links = codec.to_links(theory, config.detach().cpu())
    plaquette = gauge.average_plaquette(links[None].to(torch.complex128))[0].item()
    from gaugeflow import __version__

    extra = [(INFO_RECORD, _info_xml(theory, plaquette, {"software": f"gaugeflow {__version__}", **(info or {})})),
             *codec.extra_records(config.detach().cpu(), precision)]
    return write_ildg(path, links.numpy(), field=codec.name(theory), precision=precision, lfn=lfn,
                      extra_records=extra)


def load_configuration(theory, path, *, require_checksum: bool = True) -> torch.Tensor:
    """The configuration of ``theory`` stored in the ILDG file ``path`` (shape
    ``theory.config_shape``, float64 angles or complex128 links), after checking the checksum,
    the field (group) and the lattice against ``theory`` and that every link is in the group."""
    path = os.fspath(path)
    codec = _links_of(theory)
    found = read_ildg(path, require_checksum=require_checksum)
    wanted = codec.name(theory)
    if found.field != wanted:
        raise IldgError(f"{path} holds {found.field} links; theory {theory.name} needs {wanted}")
    if tuple(found.lattice_shape) != tuple(theory.lattice_shape):
        raise IldgError(f"{path} holds a {format_lattice_shape(found.lattice_shape)} lattice, not "
                        f"{format_lattice_shape(theory.lattice_shape)} (time last)")
    return codec.from_links(torch.from_numpy(found.links), found, GROUP_TOLERANCE[found.precision], path)


def start_configuration(theory, path, n_chains: int, *, device=None, precision=torch.float64) -> torch.Tensor:
    """``n_chains`` copies of the configuration in the ILDG file ``path``, ``[n_chains,
    *theory.config_shape]`` on ``device`` in ``theory.storage_dtype(precision)``, projected onto
    the group where the file's rounding left it more than gaugeflow's tolerance off."""
    config = load_configuration(theory, path)
    field = config.to(device=device, dtype=theory.storage_dtype(precision))
    return theory.field.project(field.expand(n_chains, *field.shape).clone())


# -- ensembles ----------------------------------------------------------------------------------
def parse_selection(text: str | None, n_rows: int) -> list[int]:
    """Rows of an ensemble of ``n_rows`` rows: ``None`` or ``""`` all; ``"start:stop:step"``
    as a Python slice (``"0:100:10"``, ``"::5"``, ``"-10:"``); or a comma-separated list of
    rows (``"5,7,9"``, negative from the end).  Out-of-range rows are an :class:`InputError`."""
    if text is None or not text.strip():
        return list(range(n_rows))
    text = text.strip()
    try:
        if ":" in text:
            parts = [int(p) if p.strip() else None for p in text.split(":")]
            if len(parts) > 3 or parts[2:3] == [0]:
                raise ValueError
            return list(range(n_rows))[slice(*parts)]
        rows = [int(p) for p in text.split(",")]
    except ValueError:
        raise InputError(f"configs selection {text!r}: give start:stop:step (e.g. 0:100:10) or rows "
                         f"(e.g. 5,7,9)") from None
    bad = [r for r in rows if not -n_rows <= r < n_rows]
    if bad:
        raise InputError(f"configs selection {text!r}: row {bad[0]} is out of range; the ensemble has {n_rows} rows")
    return [r % n_rows for r in rows]


def export_ensemble(ensemble_path, out_dir, *, selection: str | None = None, precision: int = 64,
                    lfn_prefix: str | None = None, progress=None) -> list[str]:
    """Write the configurations ``selection`` (see :func:`parse_selection`) of the ensemble
    ``ensemble_path`` as ILDG files ``out_dir/<ensemble name>.<row:06d>.ildg``; returns their
    paths.  ``out_dir`` is created if needed; if any of the files exists, nothing is written."""
    from .ensemble import open_ensemble
    from .theories import make_theory

    with open_ensemble(ensemble_path) as ensemble:
        theory = make_theory(ensemble.theory_name, ensemble.lattice_shape, **ensemble.couplings)
        _links_of(theory)  # refuse a theory without links before creating anything
        if precision not in PRECISIONS:
            raise InputError(f"ILDG precision is 32 or 64 bits, not {precision}")
        rows = parse_selection(selection, len(ensemble))
        if not rows:
            raise InputError(f"configs selection {selection!r} selects none of the {len(ensemble)} rows")
        stem = os.path.basename(os.fspath(ensemble_path))
        stem = stem[:-3] if stem.endswith(".h5") else stem
        paths = [os.path.join(os.fspath(out_dir), f"{stem}.{row:06d}.ildg") for row in rows]
        existing = [p for p in paths if os.path.exists(p)]
        if existing:
            raise IldgError(f"{existing[0]} already exists ({len(existing)} of the {len(paths)} files); refusing to "
                            f"overwrite: choose another --out or another selection")
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as error:
            raise IldgError(f"cannot create {out_dir}: {describe_os_error(error)}") from None
        chain, step = ensemble.column("chain"), ensemble.column("step")
        prefix = lfn_prefix or f"lfn://gaugeflow/{stem}"
        for row, path in zip(rows, paths):
            config = ensemble.configs(row, row + 1)[0]
            info = {"ensemble": os.path.basename(os.fspath(ensemble_path)), "row": row, "chain": int(chain[row]),
                    "trajectory": int(step[row])}
            save_configuration(theory, torch.from_numpy(config), path, precision=precision,
                               lfn=f"{prefix.rstrip('/')}/{os.path.basename(path)}", info=info)
            if progress is not None:
                progress(path)
    return paths
