package outputlock

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// Counts are what one pass (or the watcher, since the last pass) did. Every
// system call the walker makes is counted, so tests and the benchmark can
// assert that a pass over a folder already in order writes nothing.
type Counts struct {
	Entries  uint64 `json:"entries"`  // entries examined, the root included
	Dirs     uint64 `json:"dirs"`     // directories descended into
	Fixed    uint64 `json:"fixed"`    // entries whose owner or mode was changed
	Removed  uint64 `json:"removed"`  // symlinks removed
	Reported uint64 `json:"reported"` // symlinks, hard links and special files found
	Errors   uint64 `json:"errors"`   // entries that could not be examined or fixed

	Stats    uint64 `json:"stats"`    // fstatat and fstat calls
	Opens    uint64 `json:"opens"`    // openat calls
	Closes   uint64 `json:"closes"`   // close calls
	Getdents uint64 `json:"getdents"` // getdents64 calls
	Chowns   uint64 `json:"chowns"`   // fchown/fchownat calls
	Chmods   uint64 `json:"chmods"`   // fchmod/fchmodat2 calls
	Unlinks  uint64 `json:"unlinks"`  // unlinkat calls
}

// Writes is the number of calls that changed the filesystem.
func (c Counts) Writes() uint64 { return c.Chowns + c.Chmods + c.Unlinks }

// Syscalls is the number of filesystem system calls made.
func (c Counts) Syscalls() uint64 {
	return c.Stats + c.Opens + c.Closes + c.Getdents + c.Writes()
}

func (c *Counts) add(o Counts) {
	c.Entries += o.Entries
	c.Dirs += o.Dirs
	c.Fixed += o.Fixed
	c.Removed += o.Removed
	c.Reported += o.Reported
	c.Errors += o.Errors
	c.Stats += o.Stats
	c.Opens += o.Opens
	c.Closes += o.Closes
	c.Getdents += o.Getdents
	c.Chowns += o.Chowns
	c.Chmods += o.Chmods
	c.Unlinks += o.Unlinks
}

// report is one thing the walker tells its owner about: a symlink, hard
// link or special file found, or an error on one entry.
type report struct {
	find   finding // findNone for errors
	path   string  // relative to the root ("" is the root itself)
	detail string
	err    error
}

// maxDepth bounds the directory nesting the walker descends, so a
// malicious tree cannot exhaust file descriptors (one is open per level).
const maxDepth = 256

// walker locks one tree. It only ever acts on inodes through descriptors it
// opened with O_NOFOLLOW relative to a directory descriptor it opened the
// same way, starting at the root; so no path it uses is resolved through a
// symlink, and an entry swapped for a symlink between two calls makes the
// second call fail instead of reaching outside the folder.
type walker struct {
	ctx  context.Context
	want want
	n    Counts
	// onDir is called for each directory opened (before it is listed), with
	// its descriptor (valid only during the call) and path; the watcher adds
	// its inotify watch here, so nothing created after the listing is missed.
	onDir func(fd int, rel string)
	// onReport receives findings and errors.
	onReport func(report)
	rootDev  uint64
	// afterStat, when set (tests only), runs between looking at an entry
	// and acting on it: the window a swap-in attack aims for.
	afterStat func(rel string)
}

var direntBufs = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// openRoot opens the folder itself. The last component must not be a
// symlink; the folders above it are the operator's, not the container's.
func (w *walker) openRoot(root string) (int, error) {
	w.n.Opens++
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			var st unix.Stat_t
			if unix.Lstat(root, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				return -1, fmt.Errorf("opening %s: it is a symlink; refusing to follow it", root)
			}
			return -1, fmt.Errorf("opening %s: not a directory", root)
		}
		return -1, fmt.Errorf("opening %s: %w", root, err)
	}
	return fd, nil
}

// pass locks the whole tree under root. It returns the root's state as
// found before fixing (for status) or an error when the root cannot be
// opened; errors on entries inside go to onReport and the counts.
func (w *walker) pass(root string) (entry, error) {
	fd, err := w.openRoot(root)
	if err != nil {
		return entry{}, err
	}
	defer w.close(fd)
	var st unix.Stat_t
	if err := w.fstat(fd, &st); err != nil {
		return entry{}, fmt.Errorf("examining %s: %w", root, err)
	}
	w.rootDev = st.Dev
	e := entryFromStat(&st)
	w.lockDir(fd, "", e, 0)
	return e, nil
}

// lockDir fixes an open directory, announces it, and walks its entries.
func (w *walker) lockDir(fd int, rel string, e entry, depth int) {
	w.n.Entries++
	w.apply(fd, rel, decide(w.want, e), true)
	if w.onDir != nil {
		w.onDir(fd, rel)
	}
	if w.ctx.Err() != nil {
		return
	}
	if depth >= maxDepth {
		w.fail(rel, fmt.Errorf("not descending: deeper than %d levels", maxDepth))
		return
	}
	w.n.Dirs++
	bp := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(bp)
	buf := *bp
	var names []string
	for {
		w.n.Getdents++
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			w.fail(rel, fmt.Errorf("listing: %w", err))
			return
		}
		if n <= 0 {
			return
		}
		// The names of one batch are copied out, so the buffer holds at
		// most one batch per level: memory does not grow with the folder.
		_, _, names = unix.ParseDirent(buf[:n], -1, names[:0])
		for _, name := range names {
			w.entryAt(fd, rel, name, depth+1, false)
		}
	}
}

// entryAt examines and fixes the entry name in the open directory dirfd.
// retried is set on the second look at an entry that changed type under
// the walker, so a racing attacker cannot keep it looping.
func (w *walker) entryAt(dirfd int, dirRel, name string, depth int, retried bool) {
	rel := path.Join(dirRel, name)
	var st unix.Stat_t
	w.n.Stats++
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if !errors.Is(err, unix.ENOENT) {
			w.fail(rel, fmt.Errorf("examining: %w", err))
		}
		return
	}
	e := entryFromStat(&st)
	if w.afterStat != nil {
		w.afterStat(rel)
	}
	switch e.kind {
	case kindDir:
		w.descend(dirfd, dirRel, name, st.Dev, depth, retried)
	case kindSymlink:
		w.n.Entries++
		a := decide(w.want, e)
		w.found(a.report, rel, "")
		if a.remove {
			w.n.Unlinks++
			// Without AT_REMOVEDIR this cannot remove a directory swapped
			// in meanwhile; at worst it removes what the container just put
			// at that name, which the container could remove itself.
			if err := unix.Unlinkat(dirfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				w.fail(rel, fmt.Errorf("removing symlink: %w", err))
			} else if err == nil {
				w.n.Removed++
			}
		}
	default:
		w.n.Entries++
		a := decide(w.want, e)
		if !a.writes() {
			w.found(a.report, rel, e.what)
			return
		}
		w.fixFile(dirfd, rel, name)
	}
}

// descend opens a subdirectory without following a symlink and locks it.
func (w *walker) descend(dirfd int, dirRel, name string, dev uint64, depth int, retried bool) {
	rel := path.Join(dirRel, name)
	if dev != w.rootDev {
		w.n.Entries++
		w.found(findOdd, rel, "mount point (not crossed)")
		return
	}
	w.n.Opens++
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		// Swapped for a symlink or file since the fstatat: look again.
		if !retried {
			w.entryAt(dirfd, dirRel, name, depth, true)
		}
		return
	case err != nil:
		w.fail(rel, fmt.Errorf("opening directory: %w", err))
		return
	}
	defer w.close(fd)
	var st unix.Stat_t
	if err := w.fstat(fd, &st); err != nil {
		w.fail(rel, fmt.Errorf("examining directory: %w", err))
		return
	}
	if st.Dev != w.rootDev {
		w.n.Entries++
		w.found(findOdd, rel, "mount point (not crossed)")
		return
	}
	w.lockDir(fd, rel, entryFromStat(&st), depth)
}

// fixFile locks a non-directory through an O_PATH handle: O_PATH never
// opens the file itself (no FIFO blocks, no device driver runs), and with
// O_NOFOLLOW a symlink swapped in yields a handle on the link, which the
// fresh fstat then shows. The decision is taken again on that fstat, so
// what is changed is exactly the inode that was examined.
func (w *walker) fixFile(dirfd int, rel, name string) {
	w.n.Opens++
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			w.fail(rel, fmt.Errorf("opening: %w", err))
		}
		return
	}
	defer w.close(fd)
	var st unix.Stat_t
	if err := w.fstat(fd, &st); err != nil {
		w.fail(rel, fmt.Errorf("examining: %w", err))
		return
	}
	e := entryFromStat(&st)
	if e.kind == kindDir {
		// A directory swapped in: the next event or pass handles it.
		return
	}
	a := decide(w.want, e)
	w.found(a.report, rel, e.what)
	if e.kind == kindSymlink {
		return // never chmod or chown through a link
	}
	w.apply(fd, rel, a, false)
}

// apply carries out a chown/chmod on a descriptor. isDir says whether fd is
// an ordinary directory descriptor (fchmod works) or an O_PATH handle.
func (w *walker) apply(fd int, rel string, a action, isDir bool) {
	if !a.chown && !a.chmod {
		return
	}
	if a.chown {
		// Chown first: it clears set-id bits, chmod then sets the mode.
		w.n.Chowns++
		if err := unix.Fchownat(fd, "", int(w.want.uid), int(w.want.gid), unix.AT_EMPTY_PATH); err != nil {
			w.fail(rel, fmt.Errorf("changing owner: %w", err))
			return
		}
	}
	if a.chmod {
		if err := w.chmod(fd, a.mode, isDir); err != nil {
			w.fail(rel, fmt.Errorf("changing mode to %04o: %w", a.mode, err))
			return
		}
	}
	w.n.Fixed++
}

// chmod sets the mode of the inode behind fd. O_PATH handles cannot be
// fchmod'ed; fchmodat2 with AT_EMPTY_PATH (Linux 6.6) can, and on older
// kernels the /proc/self/fd magic link does the same (it names the inode
// the handle holds, not a path that could be swapped).
func (w *walker) chmod(fd int, mode uint32, isDir bool) error {
	w.n.Chmods++
	if isDir {
		return unix.Fchmod(fd, mode)
	}
	err := unix.Fchmodat(fd, "", mode, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
		w.n.Chmods++
		err = unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), mode)
	}
	return err
}

func (w *walker) fstat(fd int, st *unix.Stat_t) error {
	w.n.Stats++
	return unix.Fstat(fd, st)
}

func (w *walker) close(fd int) {
	w.n.Closes++
	unix.Close(fd)
}

func (w *walker) found(f finding, rel, detail string) {
	if f == findNone {
		return
	}
	w.n.Reported++
	if w.onReport != nil {
		w.onReport(report{find: f, path: rel, detail: detail})
	}
}

func (w *walker) fail(rel string, err error) {
	w.n.Errors++
	if w.onReport != nil {
		w.onReport(report{path: rel, err: err})
	}
}
