"""ILDG interchange (gaugeflow.lattice.ildg, ``gaugeflow export``, ``gaugeflow hmc --start FILE``).

No maintained LIME library installs from the package registries (see the module docstring),
so the independent side here is written from the specifications in this file: a LIME
reader/writer with ``struct`` and the SciDAC checksum as QIO's ``DML_checksum_accum`` defines
it, site by site.  A file that tmLQCD wrote with USQCD's c-lime is rebuilt byte for byte (its
SHA-256 is checked) and read.
"""

import doctest
import hashlib
import math
import re
import struct
import zlib

import numpy as np
import pytest
import torch

from gaugeflow.lattice import ildg, make_theory
from gaugeflow.lattice.ildg import IldgError, load_configuration, read_ildg, save_configuration

# -- the independent side: LIME and the SciDAC checksum from the specifications -------------------
MAGIC = 0x456789AB


def reference_records(data: bytes) -> list[tuple[str, bytes, int]]:
    """(type, data, flags) of every LIME record: 144-byte big-endian headers, data padded to 8."""
    records, position = [], 0
    while position < len(data):
        magic, version, flags, length = struct.unpack(">IHHQ", data[position:position + 16])
        assert magic == MAGIC and version == 1
        kind = data[position + 16:position + 144].rstrip(b"\0").decode()
        start = position + 144
        records.append((kind, data[start:start + length], flags))
        position = start + length + (8 - length % 8) % 8
    assert position == len(data)
    return records


def reference_file(messages) -> bytes:
    """A LIME file of ``messages``, each a list of (type, data) records, MB/ME set per message."""
    out = b""
    for records in messages:
        for i, (kind, data) in enumerate(records):
            flags = (0x8000 if i == 0 else 0) | (0x4000 if i == len(records) - 1 else 0)
            out += struct.pack(">IHHQ", MAGIC, 1, flags, len(data)) + kind.encode().ljust(128, b"\0")
            out += data + b"\0" * ((8 - len(data) % 8) % 8)
    return out


def reference_checksum(binary: bytes, volume: int) -> tuple[int, int]:
    """QIO's DML_checksum_accum, site by site: rank r, c = crc32(site bytes),
    suma ^= c << r%29 | c >> (32 - r%29), sumb likewise with 31, in 32-bit words."""
    suma = sumb = 0
    size = len(binary) // volume
    for rank in range(volume):
        c = zlib.crc32(binary[rank * size:(rank + 1) * size]) & 0xFFFFFFFF
        for shift, which in ((rank % 29, "a"), (rank % 31, "b")):
            rotated = ((c << shift) | (c >> (32 - shift))) & 0xFFFFFFFF
            if which == "a":
                suma ^= rotated
            else:
                sumb ^= rotated
    return suma, sumb


def tag(xml: bytes, name: str) -> str:
    return re.search(rf"<{name}>\s*([^<]*?)\s*</{name}>".encode(), xml).group(1).decode()


def config_of(name, lattice, seed=7):
    theory = make_theory(name, lattice, beta=1.0)
    return theory, theory.hot_start(1, generator=torch.Generator().manual_seed(seed))[0]


CASES = [("su2", "2x3x2x4"), ("su3", "2x2x3x2"), ("u1", "3x2x2x4"), ("su2", "3x4"), ("su3", "4x3"), ("u1", "5x4")]


# -- round trip, layout and checksum -----------------------------------------------------------
@pytest.mark.parametrize("name, lattice", CASES)
def test_round_trip_is_bit_exact(tmp_path, name, lattice):
    theory, config = config_of(name, lattice)
    path = tmp_path / "conf.ildg"
    save_configuration(theory, config, path)
    back = load_configuration(theory, path)
    assert back.dtype == config.dtype and back.shape == config.shape
    assert back.numpy().tobytes() == config.numpy().tobytes()  # bit for bit, U(1) angles included
    again = tmp_path / "again.ildg"  # the file's links, written again, give the same binary record
    found = read_ildg(path)
    ildg.write_ildg(again, found.links, field=found.field)
    first = dict((k, d) for k, d, _ in reference_records(path.read_bytes()))
    second = dict((k, d) for k, d, _ in reference_records(again.read_bytes()))
    assert first["ildg-binary-data"] == second["ildg-binary-data"]
    assert first["scidac-checksum"] == second["scidac-checksum"]


@pytest.mark.parametrize("name, lattice", [("su3", "2x2x2x4"), ("u1", "4x4")])
def test_single_precision_files_start_chains_on_the_group(tmp_path, name, lattice):
    from gaugeflow.lattice.groups import unitarity_drift

    theory, config = config_of(name, lattice)
    path = tmp_path / "conf32.ildg"
    save_configuration(theory, config, path, precision=32)
    assert read_ildg(path).precision == 32 and (load_configuration(theory, path) - config).abs().max() < 1e-6
    chains = ildg.start_configuration(theory, str(path), 3, precision=torch.float32)
    assert chains.shape == (3, *theory.config_shape) and chains.dtype == theory.storage_dtype(torch.float32)
    assert torch.equal(chains[0], chains[2]) and (chains[0].to(config.dtype) - config).abs().max() < 1e-6
    if name == "su3":
        assert unitarity_drift(ildg.start_configuration(theory, str(path), 1)) < 1e-12  # projected in float64


@pytest.mark.parametrize("name, lattice", [("su3", "2x3x2x4"), ("u1", "3x4")])
def test_layout_and_checksum_follow_the_standard(tmp_path, name, lattice):
    """Read by the reference reader: records in one message, the ildg-format XML, big-endian
    data with x fastest, t slowest, mu per site, row-major matrices; the SciDAC checksum."""
    theory, config = config_of(name, lattice)
    path = tmp_path / "conf.ildg"
    returned = save_configuration(theory, config, path, lfn="lfn://test/conf")
    records = reference_records(path.read_bytes())
    kinds = [kind for kind, _, _ in records]
    assert kinds[0] == "ildg-format" and kinds[-2:] == ["ildg-binary-data", "scidac-checksum"]
    assert "ildg-data-lfn" in kinds and "gaugeflow-info" in kinds
    assert records[0][2] & 0x8000 and records[-1][2] & 0x4000 and not any(f & 0xC000 for _, _, f in records[1:-1])
    data = {kind: payload for kind, payload, _ in records}
    shape = theory.lattice_shape
    names = {4: ["lx", "ly", "lz", "lt"], 2: ["lx", "lt"]}[len(shape)]
    assert [int(tag(data["ildg-format"], n)) for n in names] == list(shape)
    assert tag(data["ildg-format"], "field") == {"su3": "su3gauge", "u1": "u1gauge"}[name]
    assert tag(data["ildg-format"], "precision") == "64" and data["ildg-data-lfn"] == b"lfn://test/conf"
    links = theory.links_as_matrices(config[None])[0].numpy()
    n, d, binary = links.shape[-1], len(shape), data["ildg-binary-data"]
    assert len(binary) == math.prod(shape) * d * n * n * 16
    rng = np.random.default_rng(0)
    for _ in range(20):  # element (a, b) of U_mu(x) sits where the standard puts it
        x = [int(rng.integers(e)) for e in shape]
        mu, a, b = int(rng.integers(d)), int(rng.integers(n)), int(rng.integers(n))
        site = sum(x[k] * math.prod(shape[:k]) for k in range(d))  # x fastest, t slowest
        offset = 16 * (((site * d + mu) * n + a) * n + b)
        re_, im = struct.unpack(">dd", binary[offset:offset + 16])
        assert complex(re_, im) == links[(mu, *x, a, b)]
    expected = reference_checksum(binary, math.prod(shape))
    assert returned == expected == ildg.scidac_checksum(binary, math.prod(shape))
    assert (int(tag(data["scidac-checksum"], "suma"), 16), int(tag(data["scidac-checksum"], "sumb"), 16)) == expected


# the file test/conf.unity of lyncs_clime's test suite: tmLQCD 5.2.0 wrote it with c-lime
TMLQCD_XLF = (b"plaquette = 1.000000000000\n trajectory nr = 0\n beta = 0.000000000000, kappa = 1.000000000000, "
              b"mu = 0.000000000000, c2_rec = 0.000000\n time = 1597916989\n hmcversion = 5.2.0\n mubar = "
              b"0.000000000000\n epsilonbar = 0.000000000000\n date = Thu Aug 20 12:49:49 2020\n")
TMLQCD_FORMAT = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ildgFormat xmlns="http://www.lqcd.org/ildg"\n'
                 b'            xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"\n'
                 b'            xsi:schemaLocation="http://www.lqcd.org/ildg/filefmt.xsd">\n  <version>1.0</version>\n'
                 b"  <field>su3gauge</field>\n  <precision>64</precision>\n  <lx>4</lx>\n  <ly>4</ly>\n  <lz>4</lz>\n"
                 b"  <lt>4</lt>\n</ildgFormat>")
TMLQCD_CHECKSUM = (b'<?xml version="1.0" encoding="UTF-8"?>\n<scidacChecksum>\n  <version>1.0</version>\n'
                   b"  <suma>35b49a1b</suma>\n  <sumb>b49a1b35</sumb>\n</scidacChecksum>")
TMLQCD_SHA256 = "6b31024743be313d44234e8d7d64afe82f80720a86cf17cb4234a1ea791ac8d9"


def test_reads_a_file_written_by_tmlqcd_with_c_lime(tmp_path):
    unit = np.zeros((4, 4, 4, 4, 4, 3, 3), dtype=">c16")
    unit[..., [0, 1, 2], [0, 1, 2]] = 1
    data = reference_file([[("xlf-info", TMLQCD_XLF)],
                           [("ildg-format", TMLQCD_FORMAT), ("ildg-binary-data", unit.tobytes()),
                            ("scidac-checksum", TMLQCD_CHECKSUM)]])
    assert hashlib.sha256(data).hexdigest() == TMLQCD_SHA256  # byte for byte the file c-lime wrote
    path = tmp_path / "conf.unity"
    path.write_bytes(data)
    found = read_ildg(path)
    assert (found.field, found.precision, found.lattice_shape) == ("su3gauge", 64, (4, 4, 4, 4))
    assert found.checksum == (0x35B49A1B, 0xB49A1B35) and b"hmcversion = 5.2.0" in found.records["xlf-info"]
    theory = make_theory("su3", "4x4x4x4", beta=6.0)
    assert torch.equal(load_configuration(theory, path), theory.cold_start(1)[0])
    assert ildg.scidac_checksum(unit.tobytes(), 256) == found.checksum


def test_reads_other_codes_layouts_and_the_reference_reader_reads_gaugeflow(tmp_path):
    """Two messages, private records first, whitespace and namespaces in the XML, 0x-prefixed
    checksums (tmLQCD's %#010x), NUL-padded text (nissa) -- written by the reference writer."""
    theory, config = config_of("su3", "2x2x2x4", seed=3)
    file_order = config.numpy().transpose(4, 3, 2, 1, 0, 5, 6)
    binary = np.ascontiguousarray(file_order, dtype=">c16").tobytes()
    suma, sumb = reference_checksum(binary, 32)
    fmt = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ildgFormat xmlns="http://www.lqcd.org/ildg">\n'
           b"  <version> 1.0 </version>\n  <field> su3gauge </field>\n  <precision> 64 </precision>\n"
           b"  <lx> 2 </lx>\n  <ly> 2 </ly>\n  <lz> 2 </lz>\n  <lt> 4 </lt>\n</ildgFormat>\0\0\0")
    check = f"<?xml version=\"1.0\"?><scidacChecksum><version>1.0</version><suma>{suma:#010x}</suma>" \
            f"<sumb>{sumb:#010x}</sumb></scidacChecksum>".encode()
    path = tmp_path / "other.lime"
    path.write_bytes(reference_file([[("scidac-private-file-xml", b"<scidacFile/>"), ("scidac-file-xml", b"x")],
                                     [("ildg-format", fmt), ("scidac-record-xml", b"<r/>"),
                                      ("ildg-data-lfn", b"lfn://elsewhere/c1"), ("ildg-binary-data", binary),
                                      ("scidac-checksum", check)]]))
    assert torch.equal(load_configuration(theory, path), config)
    assert read_ildg(path).lfn == "lfn://elsewhere/c1"
    ours = tmp_path / "ours.ildg"
    save_configuration(theory, config, ours)
    data = {kind: payload for kind, payload, _ in reference_records(ours.read_bytes())}
    assert data["ildg-binary-data"] == binary and tag(data["ildg-format"], "field") == "su3gauge"


def test_module_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    for test in finder.find(ildg, "ildg"):
        if test.name == "ildg":
            runner.run(test)
    assert runner.failures == 0 and runner.tries >= 5


# -- refusals -------------------------------------------------------------------------------------
def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_corrupted_byte_is_refused_naming_the_checksum(tmp_path):
    theory, config = config_of("su3", "2x2x2x2")
    path = tmp_path / "conf.ildg"
    save_configuration(theory, config, path)
    data = bytearray(path.read_bytes())
    start = data.index(b"ildg-binary-data") - 16 + 144
    data[start + 1000] ^= 0x01  # one bit of one link
    path.write_bytes(bytes(data))
    with pytest.raises(IldgError) as error:
        load_configuration(theory, path)
    assert "scidac-checksum mismatch" in one_line(error) and str(path) in str(error.value)


@pytest.mark.parametrize("written, wanted, message", [
    (("su3", "2x2x2x2"), ("su2", "2x2x2x2"), "holds su3gauge links; theory su2 needs su2gauge"),
    (("u1", "4x4"), ("su2", "4x4"), "holds u1gauge links"),
    (("su2", "4x4"), ("u1", "4x4"), "theory u1 needs u1gauge"),
    (("su2", "2x2x2x4"), ("su2", "2x2x4x2"), "holds a 2x2x2x4 lattice, not 2x2x4x2"),
    (("su2", "4x4"), ("su2", "4x4x1"), "holds a 4x4 lattice, not 4x4x1"),
])
def test_wrong_lattice_or_group_is_refused(tmp_path, written, wanted, message):
    theory, config = config_of(*written)
    path = tmp_path / "conf.ildg"
    save_configuration(theory, config, path)
    with pytest.raises(IldgError) as error:
        load_configuration(make_theory(wanted[0], wanted[1], beta=1.0), path)
    assert message in one_line(error)


def test_damaged_foreign_and_incomplete_files_are_refused(tmp_path):
    theory, config = config_of("su2", "2x2x2x2")
    good = tmp_path / "conf.ildg"
    save_configuration(theory, config, good)
    data = good.read_bytes()
    cases = {
        "truncated.ildg": (data[:-300], "truncated"),
        "foreign.ildg": (b"HDF5" + data[4:], "not a LIME/ILDG file"),
        "nochecksum.ildg": (reference_file([[(k, d) for k, d, _ in reference_records(data) if k != "scidac-checksum"]]),
                            "no scidac-checksum record"),
        "nodata.ildg": (reference_file([[(k, d) for k, d, _ in reference_records(data) if k != "ildg-binary-data"]]),
                        "no ildg-binary-data record"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(IldgError) as error:
            load_configuration(theory, tmp_path / name)
        assert message in one_line(error), name
    assert torch.equal(load_configuration(theory, tmp_path / "nochecksum.ildg", require_checksum=False), config)
    off_group = config.clone()
    off_group[0, 0, 0, 0, 0] *= 1.01
    ildg.write_ildg(tmp_path / "off.ildg", off_group.numpy(), field="su2gauge")
    with pytest.raises(IldgError) as error:
        load_configuration(theory, tmp_path / "off.ildg")
    assert "off SU(2)" in one_line(error)
    with pytest.raises(IldgError) as error:
        save_configuration(theory, config, good)
    assert "already exists" in one_line(error)
    with pytest.raises(IldgError) as error:
        ildg.ildg_field_name(make_theory("phi4", "4x4", m2=-4, lam=8))
    assert "theory phi4 has none" in one_line(error)


def test_selection():
    assert ildg.parse_selection(None, 5) == [0, 1, 2, 3, 4]
    assert ildg.parse_selection("0:100:10", 35) == [0, 10, 20, 30]
    assert ildg.parse_selection("5,7,9", 10) == [5, 7, 9]
    assert ildg.parse_selection("-1", 10) == [9] and ildg.parse_selection("::-4", 9) == [8, 4, 0]
    for bad in ("5,x", "1:2:3:4", "::0", "10", "-11"):
        with pytest.raises(ildg.InputError):
            ildg.parse_selection(bad, 10)


# -- the command line, end to end -----------------------------------------------------------------
def gaugeflow(capsys, *args):
    from gaugeflow.cli import main

    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


TINY = ["--theory", "su2", "--beta", 2.0, "--lattice", "4x4", "--chains", 2, "--quiet", "--steps", 4,
        "--trajectory-length", 0.5]


def test_export_then_hmc_start_end_to_end(tmp_path, capsys, monkeypatch):
    from gaugeflow.lattice import open_ensemble, storage

    ens = tmp_path / "ens.h5"
    assert gaugeflow(capsys, "hmc", *TINY, "--n-configs", 6, "--therm", 3, "--out", ens)[0] == 0
    out = tmp_path / "ildg"
    status, stdout, err = gaugeflow(capsys, "export", ens, "--format", "ildg", "--out", out, "--configs", "1:6:2")
    assert status == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["ens.000001.ildg", "ens.000003.ildg", "ens.000005.ildg"]
    theory = make_theory("su2", "4x4", beta=2.0)
    with open_ensemble(ens) as ensemble:
        configs, chain, step = ensemble.configs(), ensemble.column("chain"), ensemble.column("step")
    for row in (1, 3, 5):
        path = out / f"ens.{row:06d}.ildg"
        assert load_configuration(theory, path).numpy().tobytes() == configs[row].tobytes()
        info = read_ildg(path).records["gaugeflow-info"]
        stored = int(tag(info, "row")), int(tag(info, "chain")), int(tag(info, "trajectory"))
        assert stored == (row, chain[row], step[row])
        assert read_ildg(path).lfn == f"lfn://gaugeflow/ens/ens.{row:06d}.ildg"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    status, _, err = gaugeflow(capsys, "export", ens, "--out", out, "--configs", "0,3")
    assert status == 2 and "ens.000003.ildg already exists" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written, not even row 0

    monkeypatch.setenv("GAUGEFLOW_FAULT", "enospc:1")  # a full disk: one line, nothing half-written
    monkeypatch.setitem(storage._fault, "steps", 0)
    status, _, err = gaugeflow(capsys, "export", ens, "--out", tmp_path / "full", "--configs", "0")
    assert status == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert list((tmp_path / "full").iterdir()) == []
    monkeypatch.delenv("GAUGEFLOW_FAULT")

    start = out / "ens.000003.ildg"  # every chain starts there: tiny trajectories barely move it
    cont = tmp_path / "cont.h5"
    status, _, err = gaugeflow(capsys, "hmc", *TINY, "--n-configs", 2, "--therm", 0, "--no-tune", "--steps", 1,
                               "--trajectory-length", 1e-3, "--start", start, "--out", cont)
    assert status == 0, err
    with open_ensemble(cont) as ensemble:
        first = ensemble.configs()
    assert first.shape[0] == 2 and np.abs(first - configs[3]).max() < 1e-2
    assert np.abs(first - configs[0]).max() > 0.1

    corrupt = tmp_path / "corrupt.ildg"
    data = bytearray(start.read_bytes())
    data[data.index(b"ildg-binary-data") + 200] ^= 0x10
    corrupt.write_bytes(bytes(data))
    for bad, message in [(corrupt, "scidac-checksum mismatch"), (tmp_path / "none.ildg", "no such file")]:
        status, _, err = gaugeflow(capsys, "hmc", *TINY, "--n-configs", 2, "--therm", 0, "--start", bad,
                                   "--out", tmp_path / "never.h5")
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "never.h5").exists()
    status, _, err = gaugeflow(capsys, "hmc", *TINY, "--lattice", "4x2", "--n-configs", 2, "--therm", 0,
                               "--start", start, "--out", tmp_path / "never.h5")
    assert status == 2 and "holds a 4x4 lattice, not 4x2" in err and not (tmp_path / "never.h5").exists()
