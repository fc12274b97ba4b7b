package outputlock

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestDecide(t *testing.T) {
	w := want{uid: 0, gid: 0, dirMode: 0o700, fileMode: 0o600}
	wRemove := w
	wRemove.removeSymlinks = true
	cases := map[string]struct {
		want  want
		entry entry
		act   action
	}{
		"file in order": {w, entry{kind: kindFile, mode: 0o600, nlink: 1}, action{mode: 0o600}},
		"file mode wrong": {w, entry{kind: kindFile, mode: 0o644, nlink: 1},
			action{chmod: true, mode: 0o600}},
		"file owner wrong": {w, entry{kind: kindFile, mode: 0o600, uid: 1000, gid: 1000, nlink: 1},
			action{chown: true, mode: 0o600}},
		"file group wrong only": {w, entry{kind: kindFile, mode: 0o600, gid: 5, nlink: 1},
			action{chown: true, mode: 0o600}},
		"setuid bit is stripped": {w, entry{kind: kindFile, mode: 0o4755, nlink: 1},
			action{chmod: true, mode: 0o600}},
		"dir gets dir mode": {w, entry{kind: kindDir, mode: 0o755, uid: 65534, nlink: 2},
			action{chmod: true, chown: true, mode: 0o700}},
		"dir with many links is still a dir": {w, entry{kind: kindDir, mode: 0o700, nlink: 9},
			action{mode: 0o700}},
		"hard link out of order is left alone": {w, entry{kind: kindFile, mode: 0o644, uid: 1000, nlink: 2},
			action{report: findHardlink}},
		"hard link owned by us but wrong mode is left alone": {w, entry{kind: kindFile, mode: 0o640, nlink: 2},
			action{report: findHardlink}},
		"hard link already in order is fine": {w, entry{kind: kindFile, mode: 0o600, nlink: 2},
			action{mode: 0o600}},
		"symlink reported": {w, entry{kind: kindSymlink, mode: 0o777, uid: 1000, nlink: 1},
			action{report: findSymlink}},
		"symlink removed": {wRemove, entry{kind: kindSymlink, mode: 0o777, nlink: 1},
			action{report: findSymlink, remove: true}},
		"fifo reported and locked": {w, entry{kind: kindOdd, mode: 0o666, nlink: 1, what: "fifo"},
			action{report: findOdd, chmod: true, mode: 0o600}},
		"hard-linked device left alone": {w, entry{kind: kindOdd, mode: 0o666, nlink: 3, what: "char device"},
			action{report: findHardlink}},
		"other owner config": {want{uid: 1000, gid: 1000, dirMode: 0o750, fileMode: 0o640}, entry{kind: kindFile, mode: 0o640, nlink: 1},
			action{chown: true, mode: 0o640}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got := decide(c.want, c.entry)
			if got != c.act {
				t.Errorf("decide = %+v, want %+v", got, c.act)
			}
			if got.report == findHardlink && got.writes() {
				t.Errorf("a hard link must never be written to")
			}
		})
	}
}

func TestEntryFromStat(t *testing.T) {
	cases := map[string]struct {
		mode uint32
		kind kind
		what string
	}{
		"regular": {unix.S_IFREG | 0o644, kindFile, ""},
		"dir":     {unix.S_IFDIR | 0o755, kindDir, ""},
		"symlink": {unix.S_IFLNK | 0o777, kindSymlink, ""},
		"fifo":    {unix.S_IFIFO | 0o644, kindOdd, "fifo"},
		"socket":  {unix.S_IFSOCK | 0o755, kindOdd, "socket"},
		"chr":     {unix.S_IFCHR | 0o666, kindOdd, "char device"},
		"blk":     {unix.S_IFBLK | 0o660, kindOdd, "block device"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			e := entryFromStat(&unix.Stat_t{Mode: c.mode, Nlink: 1})
			if e.kind != c.kind || e.what != c.what || e.mode != c.mode&0o7777 {
				t.Errorf("entryFromStat(%#o) = %+v", c.mode, e)
			}
		})
	}
}
