package outputlock

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// kind is what sort of directory entry the walker found.
type kind int

const (
	kindFile    kind = iota // regular file
	kindDir                 // directory
	kindSymlink             // symbolic link: never followed
	kindOdd                 // FIFO, socket, character or block device: never opened
)

func (k kind) String() string {
	switch k {
	case kindFile:
		return "file"
	case kindDir:
		return "directory"
	case kindSymlink:
		return "symlink"
	}
	return "special file"
}

// want is the state the lock keeps: owner, group and the two modes.
type want struct {
	uid, gid       uint32
	dirMode        uint32 // permission bits only
	fileMode       uint32
	removeSymlinks bool
}

// entry is what one lstat/fstat observed about an inode.
type entry struct {
	kind  kind
	mode  uint32 // permission and special bits (07777)
	uid   uint32
	gid   uint32
	nlink uint64
	what  string // for odd files: fifo, socket, char device, block device
}

// entryFromStat turns a stat result into an entry.
func entryFromStat(st *unix.Stat_t) entry {
	e := entry{mode: st.Mode & 0o7777, uid: st.Uid, gid: st.Gid, nlink: uint64(st.Nlink)}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.kind = kindFile
	case unix.S_IFDIR:
		e.kind = kindDir
	case unix.S_IFLNK:
		e.kind = kindSymlink
	case unix.S_IFIFO:
		e.kind, e.what = kindOdd, "fifo"
	case unix.S_IFSOCK:
		e.kind, e.what = kindOdd, "socket"
	case unix.S_IFCHR:
		e.kind, e.what = kindOdd, "char device"
	case unix.S_IFBLK:
		e.kind, e.what = kindOdd, "block device"
	default:
		e.kind, e.what = kindOdd, fmt.Sprintf("unknown type %#o", st.Mode&unix.S_IFMT)
	}
	return e
}

// finding says why an entry is reported to the operator.
type finding int

const (
	findNone     finding = iota
	findSymlink          // a symlink inside the folder
	findHardlink         // a multiply linked file the lock will not change
	findOdd              // a FIFO, socket or device node
)

// action is what the lock does about one entry. The zero value is "nothing".
type action struct {
	chown  bool
	chmod  bool
	mode   uint32 // the mode to set when chmod is true
	remove bool   // unlink it (symlinks, with symlinks = "remove")
	report finding
}

// writes reports whether the action changes the filesystem.
func (a action) writes() bool { return a.chown || a.chmod || a.remove }

// decide is the whole locking policy for one entry.
//
// Symlinks are never chmodded or chowned (that would act on their target
// with some calls, and their own mode means nothing): they are reported and
// removed when configured. A regular file (or special file) with more than
// one link may be a hard link to a file outside the folder (/etc/shadow
// linked in by the container): if it is not already as wanted it is
// reported and left alone, because changing it would change the outside
// file too. Everything else is brought to the wanted owner and mode; special
// files are reported as well, and locked through a handle that never opens
// them.
func decide(w want, e entry) action {
	var a action
	switch e.kind {
	case kindSymlink:
		return action{report: findSymlink, remove: w.removeSymlinks}
	case kindDir:
		a.mode = w.dirMode
	default:
		a.mode = w.fileMode
		if e.kind == kindOdd {
			a.report = findOdd
		}
	}
	a.chown = e.uid != w.uid || e.gid != w.gid
	a.chmod = e.mode != a.mode
	if e.kind != kindDir && e.nlink > 1 && (a.chown || a.chmod) {
		return action{report: findHardlink}
	}
	return a
}
