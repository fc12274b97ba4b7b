package outputlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zguard/zguard/config"
)

// Deps is what the lock needs from outside; nil fields get real defaults.
type Deps struct {
	// Log is the subsystem's logger (the agent passes one already tagged
	// subsystem=output; the default is tagged here).
	Log *slog.Logger
	Now func() time.Time
}

// Lock keeps one output folder locked. Create it with New, hand it its
// section with Apply, and run Run until shutdown.
type Lock struct {
	log *slog.Logger
	now func() time.Time

	// mu serializes all work on the tree: Apply's pass, Run's passes and
	// event handling. It guards the fields below it.
	mu         sync.Mutex
	cfg        config.Output
	applied    bool
	want       want
	wt         *watcher
	gen        uint64
	needPass   string // reason for the next full pass; "" for none
	lastFull   time.Time
	rootErr    string    // why the root could not be opened; Run polls while set
	watchErrAt time.Time // when starting the watcher last failed
	runCtx     context.Context
	afterStat  func(rel string) // test hook, see walker.afterStat

	events chan batch
	wake   chan struct{}

	// smu guards st, so Status never waits for a pass.
	smu sync.Mutex
	st  Status
}

// tick is how often Run looks for work besides events: a missing root
// folder is polled this often, so its recreation is noticed within it.
const tick = 250 * time.Millisecond

// New returns a lock that does nothing until Apply.
func New(d Deps) *Lock {
	if d.Log == nil {
		d.Log = slog.Default().With("subsystem", "output")
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return &Lock{
		log:    d.Log,
		now:    d.Now,
		events: make(chan batch, 64),
		wake:   make(chan struct{}, 1),
	}
}

// wantFrom validates a section and resolves its owner and group.
func wantFrom(cfg config.Output) (want, error) {
	if err := config.CheckOutputPath(cfg.Path); err != nil {
		return want{}, fmt.Errorf("checking output.path: %w", err)
	}
	uid, err := config.LookupUID(cfg.Owner)
	if err != nil {
		return want{}, fmt.Errorf("resolving output.owner %q: %w", cfg.Owner, err)
	}
	gid, err := config.LookupGID(cfg.Group)
	if err != nil {
		return want{}, fmt.Errorf("resolving output.group %q: %w", cfg.Group, err)
	}
	if cfg.DirMode&^0o777 != 0 || cfg.FileMode&^0o777 != 0 {
		return want{}, fmt.Errorf("checking output modes %04o/%04o: only permission bits are allowed", uint32(cfg.DirMode), uint32(cfg.FileMode))
	}
	switch cfg.Symlinks {
	case "report", "remove", "":
	default:
		return want{}, fmt.Errorf("checking output.symlinks: must be report or remove, got %q", cfg.Symlinks)
	}
	return want{
		uid: uint32(uid), gid: uint32(gid),
		dirMode: uint32(cfg.DirMode), fileMode: uint32(cfg.FileMode),
		removeSymlinks: cfg.Symlinks == "remove",
	}, nil
}

// Apply validates the section and makes it the one in force. When the
// folder, owner, group, modes or symlink policy change (and at the first
// Apply) it locks the whole tree at once, before returning; an unchanged
// section does nothing. Problems met while walking do not fail Apply: they
// are logged and shown in Status, and the lock keeps trying.
//
// With Enabled=false the lock stands down: it stops watching and touches
// nothing until a later Apply enables it again.
func (l *Lock) Apply(ctx context.Context, cfg config.Output) error {
	var w want
	if cfg.Enabled {
		var err error
		if w, err = wantFrom(cfg); err != nil {
			return err
		}
		cfg.Path = filepath.Clean(cfg.Path)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	old, wasOn := l.cfg, l.applied && l.cfg.Enabled
	l.cfg, l.applied = cfg, true
	defer l.poke()
	if !cfg.Enabled {
		l.stopWatch()
		l.needPass = ""
		l.rootErr = ""
		l.smu.Lock()
		l.st = Status{Enabled: false, Path: cfg.Path}
		l.smu.Unlock()
		if wasOn {
			l.log.Info("output lock disabled; no longer watching", "path", old.Path)
		}
		return nil
	}
	changed := !wasOn || old.Path != cfg.Path || w != l.want
	l.want = w
	l.setWanted()
	if !changed {
		return nil
	}
	if wasOn && old.Path != cfg.Path {
		l.stopWatch()
	}
	l.log.Info("locking output folder", "path", cfg.Path, "owner", cfg.Owner, "group", cfg.Group,
		"dir_mode", fmt.Sprintf("%04o", w.dirMode), "file_mode", fmt.Sprintf("%04o", w.fileMode),
		"watch", cfg.Watch, "symlinks", cfg.Symlinks)
	reason := "config applied"
	if wasOn {
		reason = "config changed"
	}
	l.fullPass(ctx, reason)
	return nil
}

// poke wakes Run to look at the new section.
func (l *Lock) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Run watches the folder (when watch = true) and runs the periodic full
// pass until ctx ends. It polls for the folder when it is missing, so a
// folder deleted and created again is locked and watched again.
func (l *Lock) Run(ctx context.Context) error {
	l.mu.Lock()
	l.runCtx = ctx
	l.mu.Unlock()
	t := time.NewTicker(tick)
	defer t.Stop()
	defer func() {
		l.mu.Lock()
		l.stopWatch()
		l.runCtx = nil
		l.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case b := <-l.events:
			l.mu.Lock()
			l.handle(ctx, b)
			l.mu.Unlock()
		case <-l.wake:
		case <-t.C:
		}
		l.mu.Lock()
		l.housekeep(ctx)
		l.mu.Unlock()
	}
}

// housekeep brings the watcher in line with the section and runs a full
// pass when one is due. Called with mu held.
func (l *Lock) housekeep(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	if !l.applied || !l.cfg.Enabled {
		l.stopWatch()
		return
	}
	now := l.now()
	switch {
	case !l.cfg.Watch && l.wt != nil:
		l.stopWatch()
	case l.cfg.Watch && l.wt == nil && now.Sub(l.watchErrAt) >= 10*time.Second:
		l.gen++
		wt, err := newWatcher(ctx, l.gen, l.events)
		l.smu.Lock()
		l.st.WatchError = ""
		if err != nil {
			l.st.WatchError = err.Error()
		}
		l.smu.Unlock()
		if err != nil {
			l.watchErrAt = now
			l.noteErr("", err)
			break
		}
		l.wt = wt
		l.needPass = "watch started"
	}
	if l.rootErr != "" && l.needPass == "" {
		l.needPass = "polling for the folder"
	}
	if iv := l.cfg.FullPassInterval.D(); iv > 0 && l.needPass == "" && now.Sub(l.lastFull) >= iv {
		l.needPass = "periodic"
	}
	// Passes asked for by events are at most one a second, so a
	// container renaming folders in a loop cannot keep the lock walking.
	if l.needPass != "" && (l.needPass != "directory moved" || now.Sub(l.lastFull) >= time.Second) {
		l.fullPass(ctx, l.needPass)
	}
}

// stopWatch closes the watcher. Called with mu held.
func (l *Lock) stopWatch() {
	if l.wt == nil {
		return
	}
	l.wt.close()
	l.wt = nil
	l.smu.Lock()
	l.st.Watching, l.st.Watches = false, 0
	l.smu.Unlock()
}

// Pass walks the whole tree now, as the periodic pass does, and returns
// what it did; the error says why the folder could not be walked. The
// agent does not need it: it is for one-off runs and the benchmark.
func (l *Lock) Pass(ctx context.Context) (Pass, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.applied || !l.cfg.Enabled {
		return Pass{}, errors.New("running an output pass: the lock is not enabled")
	}
	return l.fullPass(ctx, "requested")
}

// fullPass walks the whole tree. Called with mu held.
func (l *Lock) fullPass(ctx context.Context, reason string) (Pass, error) {
	l.needPass = ""
	start := l.now()
	l.lastFull = start
	root := l.cfg.Path
	if l.wt != nil {
		// A root that was replaced (renamed away, a new one made) needs
		// new watches: start over on the new one.
		var st unix.Stat_t
		if d := l.wt.dirs[l.wt.rootWD]; d != nil && unix.Lstat(root, &st) == nil && (st.Dev != d.dev || st.Ino != d.ino) {
			l.stopWatch()
			l.gen++
			if wt, err := newWatcher(l.ctxForWatch(ctx), l.gen, l.events); err == nil {
				l.wt = wt
			} else {
				l.noteErr("", err)
			}
		}
	}
	w := l.walker(ctx)
	if l.wt != nil {
		wt := l.wt
		w.onDir = func(fd int, rel string) {
			if err := wt.add(fd, rel); err != nil {
				w.fail(rel, err)
			}
		}
	}
	l.smu.Lock()
	l.st.hardlinksSincePass = 0
	l.smu.Unlock()
	before, err := w.pass(root)
	var after entry
	if err == nil {
		after = l.rootNow(root, before)
	}
	d := l.now().Sub(start)
	prevErr := l.rootErr
	l.rootErr = ""
	if err != nil {
		l.rootErr = err.Error()
	}
	// The root is polled while it cannot be opened: say so once, not on
	// every poll.
	newErr := err != nil && l.rootErr != prevErr
	switch {
	case newErr && errors.Is(err, unix.ENOENT):
		l.log.Warn("output folder does not exist; waiting for it", "path", root)
		l.stopWatch()
	case newErr:
		l.log.Error("cannot lock output folder; retrying", "path", root, "err", err)
		l.stopWatch()
	case err == nil:
		lvl := slog.LevelDebug
		if w.n.Writes() > 0 || w.n.Errors > 0 || prevErr != "" || reason != "periodic" {
			lvl = slog.LevelInfo
		}
		l.log.Log(ctx, lvl, "output folder pass done", "path", root, "reason", reason, "entries", w.n.Entries,
			"fixed", w.n.Fixed, "reported", w.n.Reported, "errors", w.n.Errors, "took", d.Round(time.Millisecond))
	}
	l.smu.Lock()
	defer l.smu.Unlock()
	p := &Pass{Start: start, Duration: d.Round(time.Microsecond).String(), Reason: reason, Counts: w.n}
	l.st.LastPass = p
	l.st.Fixed += w.n.Fixed
	l.st.Root.Exists = err == nil
	l.st.Root.ActualOwner, l.st.Root.ActualMode = "", ""
	l.st.passErr = ""
	if err != nil {
		l.st.passErr = err.Error()
		if newErr && !errors.Is(err, unix.ENOENT) {
			l.addErrLocked(start, "", err.Error())
		}
	} else {
		l.st.Root.ActualOwner = fmt.Sprintf("%d:%d", after.uid, after.gid)
		l.st.Root.ActualMode = fmt.Sprintf("%04o", after.mode)
	}
	l.st.unresolved = w.n.Errors + l.st.hardlinksSincePass
	if l.wt != nil {
		l.st.Watching, l.st.Watches = true, len(l.wt.dirs)
	}
	l.st.InSync = err == nil && l.st.unresolved == 0 && after.uid == l.want.uid && after.gid == l.want.gid && after.mode == l.want.dirMode
	p.Writes, p.Syscalls = w.n.Writes(), w.n.Syscalls()
	return *p, err
}

// ctxForWatch picks the context a new watcher's reader lives in: Run's
// while Run runs.
func (l *Lock) ctxForWatch(ctx context.Context) context.Context {
	if l.runCtx != nil {
		return l.runCtx
	}
	return ctx
}

// rootNow reads the root's owner and mode after a pass, for status.
func (l *Lock) rootNow(root string, fallback entry) entry {
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil {
		return fallback
	}
	return entryFromStat(&st)
}

// walker returns a walker for the section in force, reporting to status.
func (l *Lock) walker(ctx context.Context) *walker {
	w := &walker{ctx: ctx, want: l.want, afterStat: l.afterStat}
	logged := 0
	w.onReport = func(r report) {
		l.noteReport(r, &logged)
	}
	return w
}

// handle acts on a batch of inotify events. Called with mu held.
func (l *Lock) handle(ctx context.Context, b batch) {
	wt := l.wt
	if wt == nil || b.gen != wt.gen || !l.cfg.Enabled {
		return // from a watcher that has been closed
	}
	if b.err != nil {
		// Start a new watcher only after a while (housekeep), so a
		// persistent failure is not a busy loop; passes go on meanwhile.
		l.noteErr("", b.err)
		l.stopWatch()
		l.watchErrAt = l.now()
		l.smu.Lock()
		l.st.WatchError = b.err.Error()
		l.smu.Unlock()
		l.needPass = "watch failed"
		return
	}
	w := l.walker(ctx)
	w.rootDev = wt.rootDev
	w.onDir = func(fd int, rel string) {
		if err := wt.add(fd, rel); err != nil {
			w.fail(rel, err)
		}
	}
	type key struct {
		wd   int
		name string
	}
	seen := map[key]bool{}
	open := map[int]int{} // wd -> descriptor, for this batch
	defer func() {
		for _, fd := range open {
			w.close(fd)
		}
	}()
	dirFD := func(wd int, d *watchedDir) (int, bool) {
		if fd, ok := open[wd]; ok {
			return fd, fd >= 0
		}
		fd, ok := d.open(w, l.cfg.Path)
		open[wd] = fd
		if !ok && wd != wt.rootWD {
			// Renamed or replaced under us: a full pass finds it again.
			l.needPass = "directory moved"
		}
		return fd, ok
	}
	for _, ev := range b.events {
		if ev.mask&unix.IN_Q_OVERFLOW != 0 {
			l.log.Warn("inotify queue overflowed; running a full pass")
			l.needPass = "inotify queue overflow"
			continue
		}
		d := wt.dirs[ev.wd]
		if d == nil {
			continue
		}
		isRoot := ev.wd == wt.rootWD
		switch {
		case ev.mask&unix.IN_IGNORED != 0:
			wt.drop(ev.wd, false)
			if isRoot {
				l.rootGone("watch on the folder ended")
				return
			}
		case ev.mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0:
			if isRoot {
				l.rootGone("folder deleted or moved")
				return
			}
			if ev.mask&unix.IN_MOVE_SELF != 0 {
				// It may have moved anywhere; its old path is stale. A
				// full pass watches it again where it now is in the tree.
				wt.drop(ev.wd, true)
				l.needPass = "directory moved"
			}
		case ev.name != "":
			k := key{ev.wd, ev.name}
			if seen[k] {
				continue
			}
			seen[k] = true
			if fd, ok := dirFD(ev.wd, d); ok {
				w.entryAt(fd, d.rel, ev.name, d.depth+1, false)
			} else if isRoot {
				l.rootGone("folder replaced")
				return
			}
		case ev.mask&unix.IN_ATTRIB != 0:
			k := key{ev.wd, ""}
			if seen[k] {
				continue
			}
			seen[k] = true
			fd, ok := dirFD(ev.wd, d)
			if !ok {
				continue
			}
			var st unix.Stat_t
			if w.fstat(fd, &st) == nil {
				w.n.Entries++
				w.apply(fd, d.rel, decide(w.want, entryFromStat(&st)), true)
			}
		}
	}
	// New images arrive 0644 from ComfyUI all the time: fixing them is
	// routine (debug); removals and failures are worth an operator's eye.
	lvl := slog.LevelDebug
	if w.n.Errors > 0 || w.n.Removed > 0 {
		lvl = slog.LevelWarn
	}
	if w.n.Fixed > 0 || w.n.Errors > 0 || w.n.Removed > 0 {
		l.log.Log(ctx, lvl, "fixed new entries in the output folder", "fixed", w.n.Fixed, "removed", w.n.Removed, "errors", w.n.Errors)
	}
	l.smu.Lock()
	l.st.Watched.add(w.n)
	l.st.Fixed += w.n.Fixed
	l.st.Watches = len(wt.dirs)
	l.st.unresolved += w.n.Errors
	if w.n.Errors > 0 {
		l.st.InSync = false
	}
	l.smu.Unlock()
}

// rootGone drops the watcher after the folder itself went away; the next
// pass (polling while it is missing) locks and watches its successor.
func (l *Lock) rootGone(why string) {
	l.log.Warn("output folder went away; watching for it to come back", "path", l.cfg.Path, "why", why)
	l.stopWatch()
	l.needPass = "folder replaced"
}
