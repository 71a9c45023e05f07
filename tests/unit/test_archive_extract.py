"""Safe extraction: crafted malicious archives are refused, naming the member, writing nothing."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from marfleet.runtime.archive.errors import ArchiveError, UnsafeArchiveError
from marfleet.runtime.archive.extract import ExtractionLimits, extract_archive

MANIFEST = b'{"model": {"modelName": "m", "handler": "handler.py"}}'
LIMITS = ExtractionLimits()


def make_zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for info, data in members:
            bundle.writestr(info, data)
    return path


def make_tgz(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        for info in members:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            bundle.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def unix_member(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def everything_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """tmp_path/work holds the archive and the target; tmp_path itself must stay untouched."""
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    return work


def assert_refused(
    archive: Path, member: str, reason: str, limits: ExtractionLimits = LIMITS
) -> None:
    target = archive.parent / "target"
    before = everything_under(archive.parent.parent.parent)
    with pytest.raises(UnsafeArchiveError) as refused:
        extract_archive(archive, target, limits)
    assert refused.value.member == member
    assert reason in str(refused.value)
    assert repr(member) in str(refused.value)
    assert not target.exists()
    assert everything_under(archive.parent.parent.parent) == before


def test_a_good_zip_is_extracted_with_its_folders(sandbox: Path) -> None:
    archive = make_zip(
        sandbox / "good.mar",
        [
            ("handler.py", b"x = 1\n"),
            ("sub/dir/data.txt", b"data"),
            ("MAR-INF/MANIFEST.json", MANIFEST),
        ],
    )
    extract_archive(archive, sandbox / "target", LIMITS)
    assert (sandbox / "target/sub/dir/data.txt").read_bytes() == b"data"
    assert (sandbox / "target/MAR-INF/MANIFEST.json").read_bytes() == MANIFEST
    assert [p.name for p in sandbox.iterdir() if p.name.startswith(".")] == []


def test_a_good_tgz_is_extracted(sandbox: Path) -> None:
    archive_dirs = [tar_member("m", tarfile.DIRTYPE), tar_member("m/handler.py")]
    archive = make_tgz(sandbox / "good.tar.gz", archive_dirs, {"m/handler.py": b"x = 1\n"})
    extract_archive(archive, sandbox / "target", LIMITS)
    assert (sandbox / "target/m/handler.py").read_bytes() == b"x = 1\n"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.txt", "'..'"),
        ("a/../../evil.txt", "'..'"),
        ("/tmp/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
        ("..\\evil.txt", "backslash"),
    ],
)
def test_zip_slip_names_are_refused(sandbox: Path, name: str, reason: str) -> None:
    archive = make_zip(sandbox / "slip.mar", [("ok.txt", b"fine"), (name, b"pwned")])
    assert_refused(archive, name, reason)


def test_tar_slip_names_are_refused(sandbox: Path) -> None:
    archive = make_tgz(
        sandbox / "slip.tar.gz",
        [tar_member("ok.txt"), tar_member("../evil.txt")],
        {"ok.txt": b"fine", "../evil.txt": b"pwned"},
    )
    assert_refused(archive, "../evil.txt", "'..'")


def test_zip_symlink_is_refused(sandbox: Path) -> None:
    link = unix_member("model.pt", stat.S_IFLNK | 0o777)
    archive = make_zip(sandbox / "link.mar", [(link, b"/etc/passwd")])
    assert_refused(archive, "model.pt", "symlink")


def test_zip_device_file_is_refused(sandbox: Path) -> None:
    device = unix_member("dev", stat.S_IFCHR | 0o644)
    archive = make_zip(sandbox / "dev.mar", [(device, b"")])
    assert_refused(archive, "dev", "device")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [(tarfile.SYMTYPE, "symlink"), (tarfile.LNKTYPE, "hardlink"), (tarfile.CHRTYPE, "device")],
)
def test_tar_links_and_devices_are_refused(sandbox: Path, kind: bytes, reason: str) -> None:
    archive = make_tgz(
        sandbox / "links.tar.gz",
        [tar_member("ok.txt"), tar_member("escape", kind, linkname="/etc/passwd")],
        {"ok.txt": b"fine"},
    )
    assert_refused(archive, "escape", reason)


def test_a_symlink_then_a_write_through_it_never_reaches_outside(sandbox: Path) -> None:
    outside = sandbox.parent.parent / "outside"
    outside.mkdir()
    archive = make_tgz(
        sandbox / "chain.tar.gz",
        [tar_member("dir", tarfile.SYMTYPE, linkname=str(outside)), tar_member("dir/pwned.txt")],
        {"dir/pwned.txt": b"pwned"},
    )
    assert_refused(archive, "dir", "symlink")
    assert list(outside.iterdir()) == []


def test_zip_bomb_is_refused_by_its_compression_ratio(sandbox: Path) -> None:
    archive = make_zip(sandbox / "bomb.mar", [("zeros.bin", bytes(20 * 1024 * 1024))])
    assert_refused(archive, "zeros.bin", "compression ratio")


def test_a_zip_of_many_small_compressible_members_is_refused_as_a_whole(sandbox: Path) -> None:
    # each member is under the ratio floor, so only the sum shows the bomb
    members: list[tuple[zipfile.ZipInfo | str, bytes]] = [
        (f"part{i:03}.bin", bytes(LIMITS.ratio_floor_bytes // 2)) for i in range(40)
    ]
    archive = make_zip(sandbox / "many.mar", members)
    limits = ExtractionLimits(ratio_floor_bytes=LIMITS.ratio_floor_bytes)
    target = archive.parent / "target"
    with pytest.raises(UnsafeArchiveError, match="compression ratio"):
        extract_archive(archive, target, limits)
    assert not target.exists()


def test_tgz_bomb_is_refused_while_streaming(sandbox: Path) -> None:
    archive = make_tgz(
        sandbox / "bomb.tar.gz", [tar_member("zeros.bin")], {"zeros.bin": bytes(20 * 1024 * 1024)}
    )
    assert_refused(archive, "zeros.bin", "compression ratio")


def test_oversized_member_is_refused(sandbox: Path) -> None:
    limits = ExtractionLimits(max_member_bytes=1000)
    archive = make_zip(sandbox / "big.mar", [("small.txt", b"ok"), ("weights.pt", bytes(1001))])
    assert_refused(archive, "weights.pt", "member size limit", limits)


def test_oversized_tar_member_is_refused(sandbox: Path) -> None:
    limits = ExtractionLimits(max_member_bytes=1000)
    archive = make_tgz(sandbox / "big.tar.gz", [tar_member("w.pt")], {"w.pt": bytes(1001)})
    assert_refused(archive, "w.pt", "member size limit", limits)


def test_total_size_limit_names_the_member_that_crosses_it(sandbox: Path) -> None:
    limits = ExtractionLimits(max_total_bytes=1500)
    members: list[tuple[zipfile.ZipInfo | str, bytes]] = [
        ("a.bin", bytes(1000)),
        ("b.bin", bytes(1000)),
    ]
    archive = make_zip(sandbox / "total.mar", members)
    assert_refused(archive, "b.bin", "total size limit", limits)


def test_total_size_limit_is_counted_while_streaming_a_tgz(sandbox: Path) -> None:
    limits = ExtractionLimits(max_total_bytes=1500)
    archive = make_tgz(
        sandbox / "total.tar.gz",
        [tar_member("a.bin"), tar_member("b.bin")],
        {"a.bin": bytes(1000), "b.bin": bytes(1000)},
    )
    assert_refused(archive, "b.bin", "total size limit", limits)


def test_too_many_members_is_refused(sandbox: Path) -> None:
    limits = ExtractionLimits(max_members=2)
    archive = make_zip(sandbox / "many.mar", [(f"f{i}", b"") for i in range(3)])
    assert_refused(archive, "f2", "more than 2 members", limits)


def test_a_member_twice_is_refused(sandbox: Path) -> None:
    archive = make_tgz(
        sandbox / "twice.tar.gz",
        [tar_member("handler.py"), tar_member("handler.py")],
        {"handler.py": b"x"},
    )
    assert_refused(archive, "handler.py", "twice")


def test_not_an_archive_says_what_it_expected(sandbox: Path) -> None:
    bogus = sandbox / "model.mar"
    bogus.write_bytes(b"just text")
    with pytest.raises(ArchiveError, match=r"neither a zip \(\.mar\) nor"):
        extract_archive(bogus, sandbox / "target", LIMITS)


def test_existing_target_is_not_overwritten(sandbox: Path) -> None:
    archive = make_zip(sandbox / "good.mar", [("a.txt", b"a")])
    (sandbox / "target").mkdir()
    with pytest.raises(ArchiveError, match="already exists"):
        extract_archive(archive, sandbox / "target", LIMITS)
