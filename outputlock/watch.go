package outputlock

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// watchMask is what each watched directory reports: entries appearing
// (created or moved in), any owner/mode/link change, and the directory
// itself going away.
const watchMask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_ATTRIB |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR | unix.IN_EXCL_UNLINK

// event is one inotify event.
type event struct {
	wd   int
	mask uint32
	name string
}

// parseEvents decodes a buffer read from an inotify descriptor. A record
// that does not fit is an error rather than a panic: the buffer comes from
// the kernel, but the parser is fuzzed all the same.
func parseEvents(buf []byte) ([]event, error) {
	var evs []event
	for len(buf) > 0 {
		if len(buf) < unix.SizeofInotifyEvent {
			return evs, fmt.Errorf("parsing inotify event: %d bytes left, header needs %d", len(buf), unix.SizeofInotifyEvent)
		}
		wd := int32(binary.NativeEndian.Uint32(buf[0:4]))
		mask := binary.NativeEndian.Uint32(buf[4:8])
		nameLen := binary.NativeEndian.Uint32(buf[12:16])
		buf = buf[unix.SizeofInotifyEvent:]
		if uint64(nameLen) > uint64(len(buf)) {
			return evs, fmt.Errorf("parsing inotify event: name of %d bytes, %d left", nameLen, len(buf))
		}
		name := string(buf[:nameLen])
		if i := strings.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		buf = buf[nameLen:]
		evs = append(evs, event{wd: int(wd), mask: mask, name: name})
	}
	return evs, nil
}

// batch is what the reader goroutine hands to the lock's loop.
type batch struct {
	gen    uint64 // which watcher it came from; stale batches are dropped
	events []event
	err    error
}

// watchedDir is a directory under watch. No descriptor is kept (an open
// descriptor would hold the directory and delay its IN_DELETE_SELF until
// closed): events are handled by opening rel again from the root, one
// component at a time without following symlinks, and checking that the
// inode found is the one watched.
type watchedDir struct {
	rel      string
	depth    int
	dev, ino uint64
}

// watcher is one inotify instance over the tree.
type watcher struct {
	gen     uint64
	fd      int
	file    *os.File
	dirs    map[int]*watchedDir
	rootWD  int
	rootDev uint64
}

// newWatcher starts an inotify instance and the goroutine reading it.
func newWatcher(ctx context.Context, gen uint64, out chan<- batch) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("starting inotify: %w", err)
	}
	// A non-blocking descriptor wrapped in os.File goes to the runtime
	// poller, so Read parks the goroutine and Close wakes it.
	w := &watcher{gen: gen, fd: fd, file: os.NewFile(uintptr(fd), "inotify"), dirs: map[int]*watchedDir{}, rootWD: -1}
	go w.read(ctx, out)
	return w, nil
}

func (w *watcher) read(ctx context.Context, out chan<- batch) {
	buf := make([]byte, 64<<10)
	for {
		n, err := w.file.Read(buf)
		var b batch
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			b = batch{gen: w.gen, err: fmt.Errorf("reading inotify events: %w", err)}
		} else {
			evs, perr := parseEvents(buf[:n])
			b = batch{gen: w.gen, events: evs, err: perr}
		}
		select {
		case out <- b:
		case <-ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// add watches the directory open as fd. The watch is added through
// /proc/self/fd, which names the inode fd holds, so a directory swapped for
// a symlink after it was opened cannot redirect the watch. Watching an
// inode twice yields the same descriptor; then only its path is updated.
func (w *watcher) add(fd int, rel string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("watching %q: %w", rel, err)
	}
	wd, err := unix.InotifyAddWatch(w.fd, "/proc/self/fd/"+strconv.Itoa(fd), watchMask)
	if err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("watching %q: inotify watch limit reached (raise fs.inotify.max_user_watches)", rel)
		}
		return fmt.Errorf("watching %q: %w", rel, err)
	}
	depth := 0
	if rel != "" {
		depth = strings.Count(rel, "/") + 1
	}
	w.dirs[wd] = &watchedDir{rel: rel, depth: depth, dev: st.Dev, ino: st.Ino}
	if rel == "" {
		w.rootWD, w.rootDev = wd, st.Dev
	}
	return nil
}

// drop forgets a watch whose directory is gone or left the tree.
func (w *watcher) drop(wd int, rm bool) {
	if _, ok := w.dirs[wd]; !ok {
		return
	}
	if rm {
		_, _ = unix.InotifyRmWatch(w.fd, uint32(wd))
	}
	delete(w.dirs, wd)
	if wd == w.rootWD {
		w.rootWD = -1
	}
}

// close ends the instance: every watch goes with it.
func (w *watcher) close() {
	clear(w.dirs)
	w.file.Close()
}

// openDir opens the watched directory d again below root, never
// following a symlink, and checks it is still the inode that is watched.
// ok is false (and nothing is open) when it is gone or was replaced.
func (d *watchedDir) open(wk *walker, root string) (fd int, ok bool) {
	fd, err := wk.openRoot(root)
	if err != nil {
		return -1, false
	}
	if d.rel != "" {
		for _, comp := range strings.Split(d.rel, "/") {
			wk.n.Opens++
			next, err := unix.Openat(fd, comp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			wk.close(fd)
			if err != nil {
				return -1, false
			}
			fd = next
		}
	}
	var st unix.Stat_t
	if wk.fstat(fd, &st) != nil || st.Dev != d.dev || st.Ino != d.ino {
		wk.close(fd)
		return -1, false
	}
	return fd, true
}
