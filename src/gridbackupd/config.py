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
from typing import NoReturn

import attr

from gridbackupd.errors import ConfigError
from gridbackupd.format.index import INLINE_MAX
from gridbackupd.format.pack import MAX_BLOB
from gridbackupd.scan.checkpoints import CHECKPOINT_SECONDS
from gridbackupd.scan.hooks import COMMAND_TIMEOUT

DEFAULT_LISTEN = "tcp:7234:interface=127.0.0.1"

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


_INI = "gridbackupd.ini"  # the metadata key of a field read from the INI file


@attr.frozen
class _Option:
    """How one INI option is read: the ``_Reader`` method, its arguments, its key and section."""

    read: str
    args: dict
    key: str | None = None  # the INI key, if not the field's name
    section: str | None = None  # for Config's own fields: the section they are read from


def option(default, read, key=None, section=None, secret=False, **args):
    """
    A config field that is also an INI option: its default is written here
    once, and the parser and the list of known keys are made from it.  A
    ``secret`` one stays out of the repr (and so out of logs).
    """
    return attr.field(default=default, repr=not secret, metadata={_INI: _Option(read, args, key, section)})


@attr.frozen
class TahoeConfig:
    # "embedded" or an http(s) URL ending in "/"; None with an introducer.
    node_url: str | None = option(None, "node_url")
    # Another grid's introducer FURL: the daemon runs its own client node
    # joined to it (a secret: whoever has it may use the grid's storage).
    introducer: str | None = option(None, "introducer", secret=True)
    storage_nodes: int = option(3, "integer", minimum=1, maximum=32)
    shares_needed: int = option(2, "integer", minimum=1, maximum=256)
    shares_happy: int = option(3, "integer", minimum=1, maximum=256)
    shares_total: int = option(3, "integer", minimum=1, maximum=256)
    # How long a restore waits for a grid that is not connected (at start, or
    # a client node restarting) before it fails; 0 = fail at once.
    grid_wait: float = option(900.0, "duration")

    @property
    def embedded(self):
        return self.node_url == "embedded"


@attr.frozen
class BackupConfig:
    paths: tuple = option((), "abs_paths")
    exclude: tuple = option((), "lines")
    scan_interval: float = option(3600.0, "duration")
    tiny_max: int = option(128, "size", minimum=0)
    # A file below it is one blob, and a blob is at most MAX_BLOB (docs/FORMAT.md).
    chunk_threshold: int = option(1024**2, "size", minimum=64 * 1024, maximum=MAX_BLOB)
    full_every: int = option(10, "integer", minimum=1)
    # A scan writes a checkpoint it resumes from this often (0: at every 256 entries).
    checkpoint_interval: float = option(CHECKPOINT_SECONDS, "duration")
    exclude_if_present: tuple = option((), "marker_names")  # marker file names
    # Leave out directories with a valid CACHEDIR.TAG.
    exclude_caches: bool = option(True, "boolean")
    one_file_system: bool = option(False, "boolean")
    pre_command: str | None = option(None, "string")  # shell command run before each scan
    post_command: str | None = option(None, "string")  # shell command run after each scan
    # A command still running after this is killed with its whole process group (0 = no limit).
    command_timeout: float = option(COMMAND_TIMEOUT, "duration")
    # Watch the paths for changes (gridbackupd.watch); a change is scanned
    # settle after the last event, at most settle_max after the first.
    watch: bool = option(True, "boolean")
    settle: float = option(10.0, "duration")
    settle_max: float = option(60.0, "duration")
    # While watching, a full scan still runs this often (the safety net).
    full_scan_interval: float = option(86400.0, "duration")


@attr.frozen
class UploadConfig:
    parallel: int = option(4, "integer", minimum=1, maximum=64)
    pack_size: int = option(8 * 1024**2, "size", minimum=64 * 1024)
    inline_max: int = option(INLINE_MAX, "size", minimum=0)
    max_rate: int = option(0, "size", minimum=0)  # bytes/s, 0 = no limit
    # Rules "DAYS START-END RATE", the first that holds wins (upload/schedule.py).
    schedule: tuple = option((), "schedule")
    # A command run before each upload round; a failure pauses uploads.
    allow_if: str | None = option(None, "string")
    user_roots: tuple = option((b"/home", b"/root"), "user_roots")
    weight_recency: float = option(10.0, "number")
    weight_small: float = option(1.0, "number")
    weight_user: float = option(4.0, "number")
    weight_age: float = option(1.0, "number")


@attr.frozen
class RetentionConfig:
    """[retention]: which snapshots are kept (retention.py) and when forget and prune run."""

    keep_last: int = option(0, "integer", minimum=0, maximum=100000)
    keep_hourly: int = option(0, "integer", minimum=0, maximum=100000)
    keep_daily: int = option(0, "integer", minimum=0, maximum=100000)
    keep_weekly: int = option(0, "integer", minimum=0, maximum=100000)
    keep_monthly: int = option(0, "integer", minimum=0, maximum=100000)
    keep_yearly: int = option(0, "integer", minimum=0, maximum=100000)
    # Apply the policy (forget, then prune) this often; 0 = on request.
    interval: float = option(86400.0, "duration")
    # Repack a pack once this fraction of it is dead.
    repack_threshold: float = option(0.5, "number", minimum=0.01, maximum=1.0)

    def policy(self):
        from gridbackupd.maintenance.retention import RetentionPolicy

        return RetentionPolicy(self.keep_last, self.keep_hourly, self.keep_daily,
                               self.keep_weekly, self.keep_monthly, self.keep_yearly)


@attr.frozen
class MaintenanceConfig:
    """[maintenance]: the jobs that keep a backup set alive on the grid."""

    lease_interval: float = option(7 * 86400.0, "duration")
    check_interval: float = option(7 * 86400.0, "duration")
    # Of the objects checked, the share downloaded and verified.
    check_verify_fraction: float = option(0.05, "number", minimum=0.0, maximum=1.0)
    check_repair: bool = option(True, "boolean")
    drill_interval: float = option(7 * 86400.0, "duration")
    drill_files: int = option(20, "integer", minimum=1, maximum=100000)
    parallel: int = option(8, "integer", minimum=1, maximum=64)


@attr.frozen
class NotifyConfig:
    """[notify]: where the daemon says that something is wrong (gridbackupd.notify)."""

    webhook: str | None = option(None, "url", secret=True)
    webhook_file: str | None = option(None, "secret_file", url=True)
    webhook_secret_file: str | None = option(None, "secret_file")
    smtp_host: str | None = option(None, "string")
    smtp_port: int = option(25, "integer", minimum=1, maximum=65535)
    smtp_starttls: bool = option(True, "boolean")
    smtp_user: str | None = option(None, "string")
    smtp_password_file: str | None = option(None, "secret_file")
    mail_from: str | None = option(None, "string")
    mail_to: tuple = option((), "lines")
    command: str | None = option(None, "string")
    command_timeout: float = option(60.0, "duration")
    ping_url: str | None = option(None, "url", secret=True)
    ping_url_file: str | None = option(None, "secret_file", url=True)
    # No complete snapshot for this long is a condition (0: never).
    stale_after: float = option(2 * 86400.0, "duration")
    # A condition that lasts is announced again at most this often.
    repeat_every: float = option(86400.0, "duration")


@attr.frozen
class MountConfig:
    """[mount]: ``gridbackup mount``."""

    # Blobs read through the mount are kept under state_dir/mount/cache up to this size.
    cache_size: int = option(1024**3, "size", minimum=0)


@attr.frozen(kw_only=True)
class Config:
    path: str
    state_dir: str = option(attr.NOTHING, "state_dir", section="gridbackup")
    hostname: str = option(attr.Factory(socket.gethostname), "string", section="gridbackup")
    tahoe: TahoeConfig = attr.field()
    backup: BackupConfig = BackupConfig()
    upload: UploadConfig = UploadConfig()
    api_listen: str = option(DEFAULT_LISTEN, "endpoint", key="listen", section="api")
    # More names the console may be reached by (a reverse proxy's); 127.0.0.1,
    # localhost and [::1] always work.
    api_allowed_hosts: tuple = option((), "host_names", key="allowed_hosts", section="api")
    # The console shows the newest snapshot's age amber, then red, after these.
    console_amber_after: float = option(86400.0, "duration", key="console_amber_after", section="api")
    console_red_after: float = option(3 * 86400.0, "duration", key="console_red_after", section="api")
    retention: RetentionConfig = RetentionConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()
    notify: NotifyConfig = NotifyConfig()
    mount: MountConfig = MountConfig()

    @property
    def statedir(self):
        """The paths under state_dir."""
        from gridbackupd.statedir import StateDir

        return StateDir(self.state_dir)


# Each section and the class whose option fields it holds ([gridbackup] and
# [api] are Config's own); anything else in a file is a typo worth stopping for.
_SECTIONS = {
    "gridbackup": Config,
    "tahoe": TahoeConfig,
    "backup": BackupConfig,
    "upload": UploadConfig,
    "api": Config,
    "retention": RetentionConfig,
    "maintenance": MaintenanceConfig,
    "notify": NotifyConfig,
    "mount": MountConfig,
}


def _options(section):
    """``(field name, INI key, field, option)`` of each option of a section, in the class's order."""
    for field in attr.fields(_SECTIONS[section]):
        opt = field.metadata.get(_INI)
        if opt is not None and (opt.section or section) == section:
            yield field.name, opt.key or field.name, field, opt


_KNOWN = {section: {key for _, key, _, _ in _options(section)} for section in _SECTIONS}


class _Reader:
    """Typed access to one parsed file, raising ConfigError with context."""

    def __init__(self, path, parser):
        self.path = path
        self.parser = parser

    def fail(self, section, key, value, allowed) -> NoReturn:
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

    def size(self, section, key, default, minimum, maximum=None):
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
        if maximum is not None and number > maximum:
            self.fail(section, key, value, f"expected at most {maximum} bytes")
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

    def lines(self, section, key, default=()):
        value = self.raw(section, key)
        if not value:
            return default
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

    # -- the options with a shape of their own ---------------------------------

    def state_dir(self, section, key, default):
        state_dir = self.string(section, key, required=True)
        if not os.path.isabs(state_dir):
            self.fail(section, key, state_dir, "expected an absolute path (or one starting with %(here)s)")
        return os.path.normpath(state_dir)

    def node_url(self, section, key, default):
        node_url = self.string(section, key)
        if node_url is not None and node_url != "embedded":
            if not re.fullmatch(r"https?://[^/\s]+/?", node_url):
                self.fail(section, key, node_url,
                          "expected 'embedded' or the URL of a Tahoe client node such as http://127.0.0.1:3456")
            if not node_url.endswith("/"):
                node_url += "/"
        return node_url

    def introducer(self, section, key, default):
        furl = self.string(section, key)
        if furl is not None and not re.fullmatch(r"pb://[a-z2-7]+@[^/\s]+/[^/\s]+", furl):
            # The part after the last / is the secret: never shown.
            self.fail(section, key, re.sub(r"/[^/]*$", "/...", furl),
                      "expected an introducer FURL, pb://TUBID@HOST:PORT/SWISSNUM "
                      "(the introducer's private/introducer.furl)")
        return furl

    def url(self, section, key, default):
        """An http(s) URL; a bad one is shown by its host only (a chat URL's path is its key)."""
        from gridbackupd.notify.secretfile import URL

        url = self.string(section, key)
        if url is not None and not URL.fullmatch(url):
            shown = re.sub(r"^(\w+://[^/]*)/.*$", r"\1/...", url)
            self.fail(section, key, shown, "expected an http:// or https:// URL")
        return url

    def secret_file(self, section, key, default, url=False):
        """A file holding a secret: absolute, readable, mode 0600 (or stricter)."""
        from gridbackupd.notify.secretfile import SecretFileError, read_secret, read_url

        path = self.string(section, key)
        if path is None:
            return None
        if not os.path.isabs(path):
            self.fail(section, key, path, "expected an absolute path (or one starting with %(here)s)")
        try:
            (read_url if url else read_secret)(path)
        except SecretFileError as e:
            self.fail(section, key, path, str(e))
        return path

    def abs_paths(self, section, key, default):
        normalized = []
        for p in self.lines(section, key, default):
            if not os.path.isabs(p):
                self.fail(section, key, p, "expected absolute paths, one per line")
            normalized.append(os.path.normpath(p))
        return tuple(normalized)

    def host_names(self, section, key, default):
        names = tuple(n.lower() for line in self.lines(section, key, default) for n in line.split())
        for name in names:
            if not re.fullmatch(r"[a-z0-9.-]+|\[?[0-9a-f:]+\]?", name):
                self.fail(section, key, name, "expected host names without ports, separated by spaces")
        return tuple(n.strip("[]") for n in names)

    def marker_names(self, section, key, default):
        names = self.lines(section, key, default)
        for name in names:
            if "/" in name or name in (".", ".."):
                self.fail(section, key, name, "expected file names (no /), one per line")
        return names

    def user_roots(self, section, key, default):
        if self.raw(section, key) is None:
            return default
        roots = self.lines(section, key)
        for p in roots:
            if not os.path.isabs(p):
                self.fail(section, key, p, "expected absolute paths, one per line")
        return tuple(os.fsencode(os.path.normpath(p)) for p in roots)

    def schedule(self, section, key, default):
        """The upload schedule's rules; a bad line is refused with its number and what is wrong."""
        from gridbackupd.upload.schedule import ScheduleError, parse_schedule

        lines = self.lines(section, key, default)
        try:
            return parse_schedule(lines).rules
        except ScheduleError as e:
            raise ConfigError(f"{self.path}: [{section}] {key} {e}") from None

    def endpoint(self, section, key, default):
        """A Twisted server endpoint string, refused here if Twisted cannot parse it."""
        from twisted.internet.endpoints import serverFromString

        listen = self.string(section, key, default)
        try:
            endpoint = serverFromString(None, listen)
        except Exception:
            self.fail(section, key, listen,
                      "expected a Twisted server endpoint such as tcp:7234:interface=127.0.0.1 "
                      "or unix:/run/gridbackup/api.sock")
        address = getattr(endpoint, "_address", None)
        if isinstance(address, str) and len(os.fsencode(address)) > 107:
            self.fail(section, key, listen,
                      "a unix socket path must be at most 107 bytes long (the kernel's limit)")
        if isinstance(address, str):
            self._private_parent(section, key, listen, address)
        return listen

    def _private_parent(self, section, key, listen, address):
        """
        A unix socket's directory must keep others out: whoever can search
        it could connect between the bind and the chmod of an older Twisted,
        and whoever can write it could put their own socket in its place.
        A directory that does not exist yet is left to the bind.
        """
        parent = os.path.dirname(os.path.abspath(address))
        try:
            st = os.stat(parent)
        except OSError:
            return
        if st.st_mode & 0o033:
            self.fail(section, key, listen,
                      f"the socket's directory {parent} is mode {st.st_mode & 0o777:o}: it must not be "
                      "searchable or writable by group or others (chmod 700 it)")
        if st.st_uid not in (0, os.geteuid()):
            self.fail(section, key, listen,
                      f"the socket's directory {parent} belongs to uid {st.st_uid}: it must be root's "
                      "or the daemon's own")


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

    sections = {}
    for section in _SECTIONS:
        values = _read_section(r, section)
        _CHECKS.get(section, lambda r, values: None)(r, values)
        sections[section] = values
    own = {**sections.pop("gridbackup"), **sections.pop("api")}
    return Config(path=path, **own, **{
        section: _SECTIONS[section](**values) for section, values in sections.items()})


def _read_section(r, section):
    """The values of a section's options, by field name: each read as its field says, with its default."""
    values = {}
    for name, key, field, opt in _options(section):
        default = field.default
        if isinstance(default, attr.Factory):  # type: ignore[arg-type]
            default = default.factory()
        elif default is attr.NOTHING:
            default = None
        values[name] = getattr(r, opt.read)(section, key, default, **opt.args)
    return values


def _check_tahoe(r, values):
    if values["introducer"] is not None and values["node_url"] is not None:
        raise ConfigError(
            f"{r.path}: [tahoe] introducer and node_url are both set: expected one of them "
            "(introducer: the daemon runs its own client node joined to that grid; "
            "node_url: 'embedded' or a client node you run)")
    if values["introducer"] is None and values["node_url"] is None:
        raise ConfigError(
            f"{r.path}: [tahoe] node_url is missing: expected 'embedded', the URL of a Tahoe "
            "client node, or [tahoe] introducer = pb://... to join a grid")
    needed, happy, total = values["shares_needed"], values["shares_happy"], values["shares_total"]
    if needed > total:
        r.fail("tahoe", "shares_needed", str(needed), f"expected at most shares_total ({total})")
    if happy > total:
        r.fail("tahoe", "shares_happy", str(happy), f"expected at most shares_total ({total})")
    storage_nodes = values["storage_nodes"]
    if values["node_url"] == "embedded" and storage_nodes < happy:
        r.fail("tahoe", "storage_nodes", str(storage_nodes),
               f"expected at least shares_happy ({happy}) for the embedded grid")


def _check_patterns(r, values):
    from gridbackupd.scan.excludes import PatternError, compile_pattern

    for pattern in values["exclude"]:
        try:
            compile_pattern(pattern, [os.fsencode(p) for p in values["paths"]])
        except PatternError as e:
            r.fail("backup", "exclude", pattern, f"not a usable pattern ({e})")


def _check_backup(r, values):
    _check_patterns(r, values)
    if values["settle"] < 0.1:
        r.fail("backup", "settle", r.raw("backup", "settle"), "expected a duration of at least 0.1s")
    if values["settle_max"] < values["settle"]:
        r.fail("backup", "settle_max", r.raw("backup", "settle_max"),
               f"expected a duration of at least settle ({values['settle']:g}s)")
    if values["full_scan_interval"] < 1:
        r.fail("backup", "full_scan_interval", r.raw("backup", "full_scan_interval"),
               "expected a duration of at least 1s (the full scan catches what no event shows)")


def _check_upload(r, values):
    if values["inline_max"] > 65536:
        r.fail("upload", "inline_max", str(values["inline_max"]), "expected at most 64KiB")


def _check_maintenance(r, values):
    if values["lease_interval"] > 30 * 86400:
        r.fail("maintenance", "lease_interval", r.raw("maintenance", "lease_interval"),
               "expected at most 30d: Tahoe storage servers expire leases after 31 days")


def _check_notify(r, values):
    for one, other in (("webhook", "webhook_file"), ("ping_url", "ping_url_file")):
        if values[one] and values[other]:
            r.fail("notify", other, values[other], f"expected {one} or {other}, not both")
    if values["webhook_secret_file"] and not (values["webhook"] or values["webhook_file"]):
        r.fail("notify", "webhook_secret_file", values["webhook_secret_file"],
               "expected only with webhook or webhook_file")
    mail = ("smtp_user", "smtp_password_file", "mail_from", "mail_to")
    if not values["smtp_host"]:
        for key in mail:
            if values[key]:
                r.fail("notify", key, r.raw("notify", key), "expected only with smtp_host (the mail server)")
        return
    for key in ("mail_from", "mail_to"):
        if not values[key]:
            raise ConfigError(f"{r.path}: [notify] {key} is missing: it is required with smtp_host")
    if bool(values["smtp_user"]) != bool(values["smtp_password_file"]):
        key = "smtp_user" if values["smtp_user"] else "smtp_password_file"
        r.fail("notify", key, r.raw("notify", key), "expected smtp_user and smtp_password_file together")
    for key in ("mail_from", "mail_to"):
        for address in ((values[key],) if key == "mail_from" else values[key]):
            if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", address):
                r.fail("notify", key, address, "expected e-mail addresses such as backup@example.org")


# What a section's values must agree on, once each is read.
_CHECKS = {
    "tahoe": _check_tahoe,
    "backup": _check_backup,
    "upload": _check_upload,
    "maintenance": _check_maintenance,
    "notify": _check_notify,
}
