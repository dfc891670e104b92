"""Test trees: make a varied file tree, and describe one for comparison."""

import hashlib
import os
import random
import stat


def make_tree(root, files=120, seed=1, large=1_500_000):
    """A home-directory-like tree: nested dirs, many small files, a large one,
    an empty one, a symlink, a name that is not UTF-8, odd modes and times."""
    rnd = random.Random(seed)
    os.makedirs(root)
    dirs = [root]
    for name in ("docs", "src", "src/pkg", "photos", "empty-dir"):
        path = os.path.join(root, name)
        os.makedirs(path)
        dirs.append(path)
    with open(os.path.join(root, "docs", "letter.txt"), "wb") as f:
        f.write(b"Dear grid,\n" * 300)
    for i in range(files):
        size = int(rnd.lognormvariate(7, 2)) % 300_000
        directory = rnd.choice(dirs[:-1])
        data = rnd.randbytes(size) if i % 3 else (b"text %d\n" % i) * (size // 8 + 1)
        path = os.path.join(directory, f"file-{i:04d}.dat")
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, rnd.choice([0o644, 0o600, 0o755, 0o640]))
        t = 1_600_000_000_000_000_000 + rnd.randrange(10**17)
        os.utime(path, ns=(t, t))
    with open(os.path.join(root, "photos", "big.raw"), "wb") as f:
        f.write(rnd.randbytes(large))
    open(os.path.join(root, "empty"), "wb").close()
    with open(os.path.join(root, "tiny"), "wb") as f:
        f.write(b"tiny\n")
    os.symlink("docs/letter.txt", os.path.join(root, "link-to-letter"))
    with open(os.path.join(os.fsencode(root), b"caf\xe9-latin1.txt"), "wb") as f:
        f.write(b"not utf-8 name\n")
    os.chmod(os.path.join(root, "src"), 0o750)
    for d in reversed(dirs):
        os.utime(d, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))


def tree_listing(root):
    """Every entry under ``root``: relative path, kind, mode, size, mtime, content hash."""
    result = []
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, broot)
            if stat.S_ISLNK(st.st_mode):
                result.append((rel, "link", os.readlink(path)))
                continue
            digest = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            result.append((rel, stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                           st.st_size if digest else None, st.st_mtime_ns, digest))
    st = os.lstat(broot)
    result.append((b".", stat.S_IMODE(st.st_mode), st.st_mtime_ns))
    return sorted(result)
