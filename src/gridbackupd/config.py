"""
The daemon's INI configuration, parsed once into a frozen ``Config``.

Every error names the file, the section, the key, the bad value and what is
allowed, in one line, because that line is all a person starting a service
sees.  ``%(here)s`` in a value is the directory of the configuration file, so
the example configuration shipped in ``etc/`` works from any checkout.
"""

import configparser
import os
import re
import socket

import attr

from gridbackupd.errors import ConfigError

DEFAULT_LISTEN = "tcp:7234:interface=127.0.0.1"
# Very small blobs go inline in the index segment up to this size.
INLINE_MAX_DEFAULT = 2048

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@attr.frozen
class TahoeConfig:
    node_url: str  # "embedded" or an http(s) URL ending in "/"
    storage_nodes: int = 3
    shares_needed: int = 2
    shares_happy: int = 3
    shares_total: int = 3

    @property
    def embedded(self):
        return self.node_url == "embedded"


@attr.frozen
class BackupConfig:
    paths: tuple = ()
    exclude: tuple = ()
    scan_interval: float = 3600.0
    tiny_max: int = 128
    chunk_threshold: int = 1024**2
    full_every: int = 10
    exclude_if_present: tuple = ()  # marker file names
    exclude_caches: bool = True  # leave out directories with a valid CACHEDIR.TAG
    one_file_system: bool = False
    pre_command: str | None = None  # shell command run before each scan
    post_command: str | None = None  # shell command run after each scan


@attr.frozen
class UploadConfig:
    parallel: int = 4
    pack_size: int = 8 * 1024**2
    inline_max: int = 2048  # INLINE_MAX_DEFAULT
    max_rate: int = 0  # bytes/s, 0 = no limit
    user_roots: tuple = (b"/home", b"/root")
    weight_recency: float = 10.0
    weight_small: float = 1.0
    weight_user: float = 4.0
    weight_age: float = 1.0


@attr.frozen
class RetentionConfig:
    """[retention]: which snapshots are kept (retention.py) and when forget and prune run."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    interval: float = 86400.0  # apply the policy (forget, then prune) this often; 0 = on request
    repack_threshold: float = 0.5  # repack a pack once this fraction of it is dead

    def policy(self):
        from gridbackupd.maintenance.retention import RetentionPolicy

        return RetentionPolicy(self.keep_last, self.keep_hourly, self.keep_daily,
                               self.keep_weekly, self.keep_monthly, self.keep_yearly)


@attr.frozen
class MaintenanceConfig:
    """[maintenance]: the jobs that keep a backup set alive on the grid."""

    lease_interval: float = 7 * 86400.0
    check_interval: float = 7 * 86400.0
    check_verify_fraction: float = 0.05  # of the objects checked, the share downloaded and verified
    check_repair: bool = True
    drill_interval: float = 7 * 86400.0
    drill_files: int = 20
    parallel: int = 8


@attr.frozen
class Config:
    path: str
    state_dir: str
    hostname: str
    tahoe: TahoeConfig
    backup: BackupConfig = BackupConfig()
    upload: UploadConfig = UploadConfig()
    api_listen: str = DEFAULT_LISTEN
    retention: RetentionConfig = RetentionConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()

    @property
    def private_dir(self):
        return os.path.join(self.state_dir, "private")

    @property
    def grid_dir(self):
        return os.path.join(self.state_dir, "grid")


# What each section may hold; anything else is a typo worth stopping for.
_KNOWN = {
    "gridbackup": {"state_dir", "hostname"},
    "tahoe": {"node_url", "storage_nodes", "shares_needed", "shares_happy", "shares_total"},
    "backup": {"paths", "exclude", "scan_interval", "tiny_max", "chunk_threshold", "full_every",
               "exclude_if_present", "exclude_caches", "one_file_system", "pre_command",
               "post_command"},
    "upload": {"parallel", "pack_size", "inline_max", "max_rate", "user_roots", "weight_recency",
               "weight_small", "weight_user", "weight_age"},
    "api": {"listen"},
    "retention": {"keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                  "keep_yearly", "interval", "repack_threshold"},
    "maintenance": {"lease_interval", "check_interval", "check_verify_fraction", "check_repair",
                    "drill_interval", "drill_files", "parallel"},
}


class _Reader:
    """Typed access to one parsed file, raising ConfigError with context."""

    def __init__(self, path, parser):
        self.path = path
        self.parser = parser

    def fail(self, section, key, value, allowed):
        raise ConfigError(
            f"{self.path}: [{section}] {key} = {value!r}: {allowed}"
        )

    def raw(self, section, key):
        if not self.parser.has_section(section) or not self.parser.has_option(section, key):
            return None
        try:
            return self.parser.get(section, key).strip()
        except configparser.Error as e:
            raw = self.parser.get(section, key, raw=True)
            self.fail(section, key, raw, f"cannot be expanded ({e.__class__.__name__})")

    def string(self, section, key, default=None, required=False):
        value = self.raw(section, key)
        if value is None or value == "":
            if required:
                raise ConfigError(
                    f"{self.path}: [{section}] {key} is missing: it is required"
                )
            return default
        return value

    def integer(self, section, key, default, minimum, maximum=None):
        value = self.raw(section, key)
        if value is None or value == "":
            return default
        allowed = f"a whole number from {minimum}" + (
            f" to {maximum}" if maximum is not None else " up"
        )
        if not re.fullmatch(r"[0-9]+", value):
            self.fail(section, key, value, f"expected {allowed}")
        number = int(value)
        if number < minimum or (maximum is not None and number > maximum):
            self.fail(section, key, value, f"expected {allowed}")
        return number

    def size(self, section, key, default, minimum):
        value = self.raw(section, key)
        if value is None or value == "":
            return default
        m = re.fullmatch(r"([0-9]+)\s*([A-Za-z]*)", value)
        unit = m and m.group(2).lower()
        if not m or unit not in _SIZE_UNITS:
            self.fail(section, key, value, "expected a size such as 8MiB, 512KiB or 4096")
        number = int(m.group(1)) * _SIZE_UNITS[unit]
        if number < minimum:
            self.fail(section, key, value, f"expected at least {minimum} bytes")
        return number

    def duration(self, section, key, default):
        value = self.raw(section, key)
        if value is None or value == "":
            return default
        m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)", value)
        if not m:
            self.fail(section, key, value, "expected a duration such as 30s, 15m, 1h or 0 (off)")
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]

    def number(self, section, key, default, minimum=0.0, maximum=1e6):
        value = self.raw(section, key)
        if value is None or value == "":
            return default
        allowed = f"expected a number from {minimum:g} to {maximum:g}"
        if not re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", value):
            self.fail(section, key, value, allowed)
        number = float(value)
        if not minimum <= number <= maximum:
            self.fail(section, key, value, allowed)
        return number

    def lines(self, section, key):
        value = self.raw(section, key)
        if not value:
            return ()
        return tuple(line.strip() for line in value.splitlines() if line.strip())

    def boolean(self, section, key, default):
        value = self.raw(section, key)
        if value is None or value == "":
            return default
        if value.lower() in ("yes", "true", "on", "1"):
            return True
        if value.lower() in ("no", "false", "off", "0"):
            return False
        self.fail(section, key, value, "expected yes or no (true/false, on/off, 1/0)")


def parse_config(path):
    """Read and check the configuration file at ``path``; return a Config."""
    path = os.path.abspath(path)
    here = os.path.dirname(path)
    parser = configparser.ConfigParser(
        interpolation=configparser.BasicInterpolation(),
        defaults={"here": here},
        default_section="__defaults__",
    )
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror}")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the configuration is not valid UTF-8")
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"{path}: not a valid INI file: {first}")

    r = _Reader(path, parser)
    for section in parser.sections():
        if section not in _KNOWN:
            raise ConfigError(
                f"{path}: [{section}] is not a known section: expected one of "
                + ", ".join(f"[{s}]" for s in _KNOWN)
            )
        for key in parser.options(section):
            if key != "here" and key not in _KNOWN[section]:
                raise ConfigError(
                    f"{path}: [{section}] {key} is not a known option: expected one of "
                    + ", ".join(sorted(_KNOWN[section]))
                )

    state_dir = r.string("gridbackup", "state_dir", required=True)
    if not os.path.isabs(state_dir):
        r.fail("gridbackup", "state_dir", state_dir, "expected an absolute path (or one starting with %(here)s)")
    state_dir = os.path.normpath(state_dir)
    hostname = r.string("gridbackup", "hostname", default=socket.gethostname())

    node_url = r.string("tahoe", "node_url", required=True)
    if node_url != "embedded":
        if not re.fullmatch(r"https?://[^/\s]+/?", node_url):
            r.fail("tahoe", "node_url", node_url,
                   "expected 'embedded' or the URL of a Tahoe client node such as http://127.0.0.1:3456")
        if not node_url.endswith("/"):
            node_url += "/"
    needed = r.integer("tahoe", "shares_needed", 2, 1, 256)
    total = r.integer("tahoe", "shares_total", 3, 1, 256)
    happy = r.integer("tahoe", "shares_happy", 3, 1, 256)
    if needed > total:
        r.fail("tahoe", "shares_needed", str(needed), f"expected at most shares_total ({total})")
    if happy > total:
        r.fail("tahoe", "shares_happy", str(happy), f"expected at most shares_total ({total})")
    storage_nodes = r.integer("tahoe", "storage_nodes", 3, 1, 32)
    if node_url == "embedded" and storage_nodes < happy:
        r.fail("tahoe", "storage_nodes", str(storage_nodes),
               f"expected at least shares_happy ({happy}) for the embedded grid")
    tahoe = TahoeConfig(node_url, storage_nodes, needed, happy, total)

    paths = r.lines("backup", "paths")
    normalized = []
    for p in paths:
        if not os.path.isabs(p):
            r.fail("backup", "paths", p, "expected absolute paths, one per line")
        normalized.append(os.path.normpath(p))
    tiny_max = r.size("backup", "tiny_max", 128, 0)
    threshold = r.size("backup", "chunk_threshold", 1024**2, 64 * 1024)
    backup = BackupConfig(
        paths=tuple(normalized),
        exclude=r.lines("backup", "exclude"),
        scan_interval=r.duration("backup", "scan_interval", 3600.0),
        tiny_max=tiny_max,
        chunk_threshold=threshold,
        full_every=r.integer("backup", "full_every", 10, 1),
        exclude_if_present=_marker_names(r),
        exclude_caches=r.boolean("backup", "exclude_caches", True),
        one_file_system=r.boolean("backup", "one_file_system", False),
        pre_command=r.string("backup", "pre_command"),
        post_command=r.string("backup", "post_command"),
    )
    _check_patterns(r, backup)

    upload = UploadConfig(
        parallel=r.integer("upload", "parallel", 4, 1, 64),
        pack_size=r.size("upload", "pack_size", 8 * 1024**2, 64 * 1024),
        inline_max=r.size("upload", "inline_max", INLINE_MAX_DEFAULT, 0),
        max_rate=r.size("upload", "max_rate", 0, 0),
        user_roots=_user_roots(r),
        weight_recency=r.number("upload", "weight_recency", 10.0),
        weight_small=r.number("upload", "weight_small", 1.0),
        weight_user=r.number("upload", "weight_user", 4.0),
        weight_age=r.number("upload", "weight_age", 1.0),
    )
    if upload.inline_max > 65536:
        r.fail("upload", "inline_max", str(upload.inline_max), "expected at most 64KiB")

    listen = r.string("api", "listen", default=DEFAULT_LISTEN)
    _check_endpoint(r, listen)

    retention = RetentionConfig(
        **{key: r.integer("retention", key, 0, 0, 100000)
           for key in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                       "keep_yearly")},
        interval=r.duration("retention", "interval", 86400.0),
        repack_threshold=r.number("retention", "repack_threshold", 0.5, 0.01, 1.0),
    )
    maintenance = MaintenanceConfig(
        lease_interval=r.duration("maintenance", "lease_interval", 7 * 86400.0),
        check_interval=r.duration("maintenance", "check_interval", 7 * 86400.0),
        check_verify_fraction=r.number("maintenance", "check_verify_fraction", 0.05, 0.0, 1.0),
        check_repair=r.boolean("maintenance", "check_repair", True),
        drill_interval=r.duration("maintenance", "drill_interval", 7 * 86400.0),
        drill_files=r.integer("maintenance", "drill_files", 20, 1, 100000),
        parallel=r.integer("maintenance", "parallel", 8, 1, 64),
    )
    if maintenance.lease_interval > 30 * 86400:
        r.fail("maintenance", "lease_interval", r.raw("maintenance", "lease_interval"),
               "expected at most 30d: Tahoe storage servers expire leases after 31 days")

    return Config(
        path=path,
        state_dir=state_dir,
        hostname=hostname,
        tahoe=tahoe,
        backup=backup,
        upload=upload,
        api_listen=listen,
        retention=retention,
        maintenance=maintenance,
    )


def _marker_names(r):
    names = r.lines("backup", "exclude_if_present")
    for name in names:
        if "/" in name or name in (".", ".."):
            r.fail("backup", "exclude_if_present", name, "expected file names (no /), one per line")
    return names


def _check_patterns(r, backup):
    from gridbackupd.scan.excludes import PatternError, compile_pattern

    for pattern in backup.exclude:
        try:
            compile_pattern(pattern, [os.fsencode(p) for p in backup.paths])
        except PatternError as e:
            r.fail("backup", "exclude", pattern, f"not a usable pattern ({e})")


def _user_roots(r):
    roots = r.lines("upload", "user_roots")
    if r.raw("upload", "user_roots") is None:
        return UploadConfig().user_roots
    for p in roots:
        if not os.path.isabs(p):
            r.fail("upload", "user_roots", p, "expected absolute paths, one per line")
    return tuple(os.fsencode(os.path.normpath(p)) for p in roots)


def _check_endpoint(r, listen):
    """Refuse an endpoint string that Twisted cannot parse, before starting."""
    from twisted.internet.endpoints import serverFromString

    try:
        endpoint = serverFromString(None, listen)
    except Exception:
        r.fail("api", "listen", listen,
               "expected a Twisted server endpoint such as tcp:7234:interface=127.0.0.1 or unix:/run/gridbackup.sock")
    address = getattr(endpoint, "_address", None)
    if isinstance(address, str) and len(os.fsencode(address)) > 107:
        r.fail("api", "listen", listen,
               "a unix socket path must be at most 107 bytes long (the kernel's limit)")
