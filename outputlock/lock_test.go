package outputlock

import (
	"context"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/internal/testenv"
)

// Owners used in trees: uid/gid 1000 and 65534 (nobody) exist on every test
// host we run on, but only their numbers matter to the kernel.
const (
	otherUID = 1000
	nobody   = 65534
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func testCfg(root string) config.Output {
	return config.Output{
		Enabled: true, Path: root, Owner: "0", Group: "0",
		DirMode: 0o700, FileMode: 0o600, Symlinks: "report",
	}
}

// runLock starts Run and stops it (waiting for it) when the test ends.
func runLock(t *testing.T, l *Lock) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
}

// mk creates a file or directory (name ending in "/") with mode and owner.
func mk(t *testing.T, p string, mode os.FileMode, uid, gid int) {
	t.Helper()
	if strings.HasSuffix(p, "/") {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
	} else if err := os.WriteFile(p, []byte("data "+p), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, uid, gid); err != nil {
		t.Fatal(err)
	}
	// Chmod after chown: chown clears set-id bits.
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// mixedTree builds a tree with wrong modes and owners everywhere.
func mixedTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "output")
	mk(t, root+"/", 0o755, otherUID, otherUID)
	mk(t, root+"/a.png", 0o644, otherUID, otherUID)
	mk(t, root+"/b.png", 0o666, nobody, nobody)
	mk(t, root+"/c.bin", 0o755|os.ModeSetuid, 0, 0)
	mk(t, root+"/d.png", 0o600, 0, 0)
	mk(t, root+"/sub/", 0o777, nobody, nobody)
	mk(t, root+"/sub/e.png", 0o644, nobody, 0)
	mk(t, root+"/sub/deep/x/y/", 0o755, otherUID, 0)
	mk(t, root+"/sub/deep/", 0o711, 0, otherUID)
	mk(t, root+"/sub/deep/x/y/f.png", 0o640, otherUID, 0)
	mk(t, root+"/empty/", 0o700, 0, 0)
	return root
}

type attrs struct {
	mode     os.FileMode
	uid, gid uint32
}

func lstat(t *testing.T, p string) attrs {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return attrs{os.FileMode(st.Mode), st.Uid, st.Gid}
}

// assertLocked checks every entry under root (root included).
func assertLocked(t *testing.T, root string, uid, gid uint32, dirMode, fileMode uint32) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n++
		a := lstat(t, p)
		want := fileMode
		if d.IsDir() {
			want = dirMode
		}
		if a.mode&0o7777 != os.FileMode(want) || a.uid != uid || a.gid != gid {
			t.Errorf("%s: mode %04o owner %d:%d, want %04o %d:%d", p, a.mode&0o7777, a.uid, a.gid, want, uid, gid)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", root, err)
	}
	if n == 0 {
		t.Fatalf("nothing under %s", root)
	}
}

func TestMixedTreeEndsAtConfiguredModes(t *testing.T) {
	testenv.Require(t, testenv.Root)
	root := mixedTree(t)
	l := New(Deps{Log: testLogger(t)})
	ctx := context.Background()
	if err := l.Apply(ctx, testCfg(root)); err != nil {
		t.Fatal(err)
	}
	assertLocked(t, root, 0, 0, 0o700, 0o600)
	s := l.Status()
	// 12 entries; d.png, empty/ and deep/x/ (made by MkdirAll) are in order.
	if !s.InSync || !s.Root.Exists || s.Fixed != 9 {
		t.Errorf("status after first pass: in_sync %v exists %v fixed %d (want true true 9)", s.InSync, s.Root.Exists, s.Fixed)
	}
	if s.Root.ActualOwner != "0:0" || s.Root.ActualMode != "0700" || s.Root.WantedMode != "0700" {
		t.Errorf("root status = %+v", s.Root)
	}
	if f := s.Findings(); len(f) != 0 {
		t.Errorf("findings on a locked tree: %v", f)
	}

	// A pass over a tree in order only looks.
	p, err := l.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p.Writes != 0 || p.Fixed != 0 {
		t.Errorf("no-op pass wrote: %+v", p)
	}
	if p.Entries != 12 || p.Stats < 12 || p.Chmods+p.Chowns+p.Unlinks != 0 {
		t.Errorf("no-op pass: %+v; want 12 entries, >= 12 stats, no writes", p.Counts)
	}

	// Changing the wanted owner and modes re-applies at once.
	cfg := testCfg(root)
	cfg.Owner, cfg.Group = "65534", "1000"
	cfg.DirMode, cfg.FileMode = 0o750, 0o640
	if err := l.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	assertLocked(t, root, nobody, otherUID, 0o750, 0o640)
	if s := l.Status(); s.Mode != "0750/0640" || s.Owner != "65534:1000" || s.Root.WantedOwner != "65534:1000" || !s.InSync {
		t.Errorf("status after reload: %+v", s)
	}
	// The same section again does nothing.
	before := l.Status().LastPass.Start
	if err := l.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if after := l.Status().LastPass.Start; !after.Equal(before) {
		t.Errorf("unchanged section ran a pass")
	}
}

func TestApplyRejectsBadSection(t *testing.T) {
	root := t.TempDir()
	cases := map[string]func(*config.Output){
		"relative path":  func(c *config.Output) { c.Path = "output" },
		"slash":          func(c *config.Output) { c.Path = "/" },
		"system folder":  func(c *config.Output) { c.Path = "/etc/ssl" },
		"unknown owner":  func(c *config.Output) { c.Owner = "no-such-user-zguard" },
		"unknown group":  func(c *config.Output) { c.Group = "no-such-group-zguard" },
		"special bits":   func(c *config.Output) { c.FileMode = 0o4600 },
		"symlink policy": func(c *config.Output) { c.Symlinks = "follow" },
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			l := New(Deps{Log: testLogger(t)})
			good := testCfg(root)
			good.Owner, good.Group = strconv.Itoa(os.Geteuid()), strconv.Itoa(os.Getegid())
			good.DirMode = 0o755
			if err := l.Apply(context.Background(), good); err != nil {
				t.Fatal(err)
			}
			bad := good
			mod(&bad)
			if err := l.Apply(context.Background(), bad); err == nil {
				t.Fatalf("Apply accepted %+v", bad)
			}
			if s := l.Status(); s.Path != root || s.Mode != "0755/0600" {
				t.Errorf("previous section not kept: %+v", s)
			}
		})
	}
}

func TestDisabledTouchesNothing(t *testing.T) {
	testenv.Require(t, testenv.Root)
	root := mixedTree(t)
	before := lstat(t, root+"/a.png")
	l := New(Deps{Log: testLogger(t)})
	cfg := testCfg(root)
	cfg.Enabled = false
	cfg.Watch = true
	if err := l.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	runLock(t, l)
	mk(t, root+"/new.png", 0o644, nobody, nobody)
	time.Sleep(600 * time.Millisecond)
	if got := lstat(t, root+"/a.png"); got != before {
		t.Errorf("disabled lock changed a.png: %+v -> %+v", before, got)
	}
	if got := lstat(t, root+"/new.png"); got.mode&0o777 != 0o644 || got.uid != nobody {
		t.Errorf("disabled lock changed new.png: %+v", got)
	}
	if s := l.Status(); s.Enabled || s.Watching || len(s.Findings()) != 0 {
		t.Errorf("disabled status: %+v", s)
	}
	// Enabling it locks at once.
	cfg.Enabled = true
	if err := l.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	assertLocked(t, root, 0, 0, 0o700, 0o600)
}

// snapshot records mode and owner of outside paths, to prove they never change.
func snapshot(t *testing.T, paths ...string) map[string]attrs {
	m := map[string]attrs{}
	for _, p := range paths {
		m[p] = lstat(t, p)
	}
	return m
}

func assertUnchanged(t *testing.T, snap map[string]attrs, when string) {
	t.Helper()
	for p, a := range snap {
		if got := lstat(t, p); got != a {
			t.Fatalf("%s: outside path %s changed: %v %d:%d -> %v %d:%d", when, p, a.mode, a.uid, a.gid, got.mode, got.uid, got.gid)
		}
	}
}

// outsideTree makes the attacker's targets: a file owned by another uid,
// mode 0644, and a directory with a file in it.
func outsideTree(t *testing.T) (dir string, snap map[string]attrs) {
	dir = filepath.Join(t.TempDir(), "outside")
	mk(t, dir+"/", 0o755, otherUID, otherUID)
	mk(t, dir+"/secret", 0o644, otherUID, otherUID)
	mk(t, dir+"/odir/", 0o755, otherUID, otherUID)
	mk(t, dir+"/odir/e.png", 0o644, otherUID, otherUID)
	return dir, snapshot(t, dir, dir+"/secret", dir+"/odir", dir+"/odir/e.png")
}

func TestSymlinksAreNeverFollowed(t *testing.T) {
	testenv.Require(t, testenv.Root)
	for _, policy := range []string{"report", "remove"} {
		t.Run(policy, func(t *testing.T) {
			out, snap := outsideTree(t)
			root := mixedTree(t)
			links := map[string]string{
				"to-file":          out + "/secret",
				"to-dir":           out + "/odir",
				"sub/relative-dir": "../../outside/odir",
				"sub/dangling":     out + "/none",
				"to-root":          "/",
			}
			for l, target := range links {
				if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
					t.Fatal(err)
				}
			}
			l := New(Deps{Log: testLogger(t)})
			cfg := testCfg(root)
			cfg.Symlinks = policy
			if err := l.Apply(context.Background(), cfg); err != nil {
				t.Fatal(err)
			}
			assertUnchanged(t, snap, "after pass")
			for name := range links {
				_, err := os.Lstat(filepath.Join(root, name))
				if policy == "remove" && !os.IsNotExist(err) {
					t.Errorf("symlink %s not removed (%v)", name, err)
				}
				if policy == "report" && err != nil {
					t.Errorf("symlink %s gone under report: %v", name, err)
				}
			}
			s := l.Status()
			if s.LastSymlink == nil {
				t.Fatalf("no symlink reported: %+v", s)
			}
			wantAction := map[string]string{"report": "reported", "remove": "removed"}[policy]
			if s.LastSymlink.Action != wantAction {
				t.Errorf("last symlink action %q, want %q", s.LastSymlink.Action, wantAction)
			}
			if !hasFinding(s, "symlink") {
				t.Errorf("no symlink finding: %v", s.Findings())
			}
			if policy == "remove" {
				// The next pass finds none, so the warning clears.
				if _, err := l.Pass(context.Background()); err != nil {
					t.Fatal(err)
				}
				if s := l.Status(); hasFinding(s, "symlink") {
					t.Errorf("symlink finding still there after a clean pass: %v", s.Findings())
				}
			}
			// A root that is itself a symlink is refused, not followed.
			lr := filepath.Join(t.TempDir(), "linked-root")
			if err := os.Symlink(out, lr); err != nil {
				t.Fatal(err)
			}
			l2 := New(Deps{Log: testLogger(t)})
			if err := l2.Apply(context.Background(), testCfg(lr)); err != nil {
				t.Fatal(err)
			}
			assertUnchanged(t, snap, "root is a symlink")
			if s := l2.Status(); s.InSync || s.Root.Exists || !hasFinding(s, "symlink") {
				t.Errorf("symlinked root status: %+v %v", s, s.Findings())
			}
		})
	}
}

func hasFinding(s Status, substr string) bool {
	for _, f := range s.Findings() {
		if strings.Contains(f.Msg, substr) {
			return true
		}
	}
	return false
}

// TestSymlinkRace swaps a subfolder and a symlink to outside (atomically,
// with RENAME_EXCHANGE, as fast as it can) while the lock walks the tree
// again and again, with and without the watcher, and checks the outside
// targets after every pass.
func TestSymlinkRace(t *testing.T) {
	testenv.Require(t, testenv.Root)
	out, snap := outsideTree(t)
	root := filepath.Join(t.TempDir(), "output")
	mk(t, root+"/", 0o700, 0, 0)
	mk(t, root+"/sub/", 0o755, otherUID, 0)
	mk(t, root+"/sub/e.png", 0o644, otherUID, 0)
	mk(t, root+"/sub/inner/", 0o755, otherUID, 0)
	mk(t, root+"/sub/inner/f.png", 0o644, otherUID, 0)
	if err := os.Symlink(out+"/odir", root+"/subL"); err != nil {
		t.Fatal(err)
	}
	// A second racer swaps a file with a link to a file.
	mk(t, root+"/files/", 0o755, otherUID, 0)
	mk(t, root+"/files/e.png", 0o644, otherUID, 0)
	if err := os.Symlink(out+"/secret", root+"/files/e.lnk"); err != nil {
		t.Fatal(err)
	}

	l := New(Deps{Log: slog.New(slog.DiscardHandler)})
	cfg := testCfg(root)
	cfg.Watch = true
	if err := l.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	runLock(t, l)

	var stop atomic.Bool
	var swaps atomic.Int64
	var wg sync.WaitGroup
	swap := func(a, b string, refresh func()) {
		defer wg.Done()
		for !stop.Load() {
			if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
				t.Errorf("exchanging %s and %s: %v", a, b, err)
				return
			}
			swaps.Add(1)
			if refresh != nil {
				refresh()
			}
		}
	}
	wg.Add(2)
	go swap(root+"/sub", root+"/subL", func() {
		// Keep giving the lock work: wrong modes on the real folder's files
		// (wherever it is now); errors are expected mid-swap.
		_ = os.Chmod(root+"/subL/inner/f.png", 0o644)
		_ = os.Chmod(root+"/sub/inner/f.png", 0o644)
	})
	go swap(root+"/files/e.png", root+"/files/e.lnk", func() {
		_ = os.Lchown(root+"/files/e.png", otherUID, 0)
		_ = os.Lchown(root+"/files/e.lnk", otherUID, 0)
	})

	deadline := time.Now().Add(3 * time.Second)
	passes := 0
	for passes < 3000 && time.Now().Before(deadline) {
		if _, err := l.Pass(context.Background()); err != nil {
			t.Fatal(err)
		}
		passes++
		assertUnchanged(t, snap, "during race")
	}
	stop.Store(true)
	wg.Wait()
	assertUnchanged(t, snap, "after race")
	t.Logf("%d passes, %d swaps; watcher handled %d entries", passes, swaps.Load(), l.Status().Watched.Entries)
	if passes < 20 || swaps.Load() < 100 {
		t.Errorf("race too short to mean anything: %d passes, %d swaps", passes, swaps.Load())
	}
	if l.Status().LastSymlink == nil {
		t.Errorf("no symlink reported during the race")
	}
}

// TestSwapBetweenLookAndAct swaps in the symlink exactly between the
// walker's look at an entry and its action on it, every time, for a
// directory and for a file: the deterministic form of the race above.
func TestSwapBetweenLookAndAct(t *testing.T) {
	testenv.Require(t, testenv.Root)
	out, snap := outsideTree(t)
	root := filepath.Join(t.TempDir(), "output")
	mk(t, root+"/", 0o700, 0, 0)
	mk(t, root+"/sub/", 0o755, otherUID, 0)
	mk(t, root+"/sub/e.png", 0o644, otherUID, 0)
	mk(t, root+"/f.png", 0o644, otherUID, 0)
	if err := os.Symlink(out+"/odir", root+"/sub.lnk"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(out+"/secret", root+"/f.lnk"); err != nil {
		t.Fatal(err)
	}
	swaps := 0
	l := New(Deps{Log: testLogger(t)})
	l.afterStat = func(rel string) {
		if rel != "sub" && rel != "f.png" {
			return
		}
		p := filepath.Join(root, rel)
		lnk := strings.TrimSuffix(p, ".png") + ".lnk"
		if err := unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, lnk, unix.RENAME_EXCHANGE); err != nil {
			t.Errorf("swapping %s: %v", rel, err)
		}
		swaps++
	}
	for i := 0; i < 4; i++ {
		cfg := testCfg(root)
		cfg.FileMode = 0o600 + config.Mode(i%2)*0o40 // a real change each time
		if err := l.Apply(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
		assertUnchanged(t, snap, "after pass "+strconv.Itoa(i))
	}
	if swaps < 8 {
		t.Errorf("only %d swaps happened", swaps)
	}
}

func TestHardlinkToOutsideFileIsReportedNotChanged(t *testing.T) {
	testenv.Require(t, testenv.Root)
	out, snap := outsideTree(t)
	root := mixedTree(t)
	// t.TempDir folders share a filesystem, so the link can be made.
	if err := os.Link(out+"/secret", root+"/sub/shadow"); err != nil {
		t.Fatal(err)
	}
	l := New(Deps{Log: testLogger(t)})
	if err := l.Apply(context.Background(), testCfg(root)); err != nil {
		t.Fatal(err)
	}
	assertUnchanged(t, snap, "after pass")
	s := l.Status()
	if s.LastHardlink == nil || s.LastHardlink.Path != "sub/shadow" || s.LastHardlink.Action != "left unchanged" {
		t.Fatalf("hard link not reported: %+v", s.LastHardlink)
	}
	if s.InSync || !hasFinding(s, "hard link") {
		t.Errorf("in_sync %v, findings %v; want not in sync and a hard-link finding", s.InSync, s.Findings())
	}
	// Everything else is locked all the same.
	if a := lstat(t, root+"/sub/e.png"); a.mode&0o777 != 0o600 || a.uid != 0 {
		t.Errorf("e.png not locked: %+v", a)
	}
	// Once the link is gone the lock is in sync again.
	if err := os.Remove(root + "/sub/shadow"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := l.Status(); !s.InSync || len(s.Findings()) != 0 {
		t.Errorf("after removing the link: in_sync %v findings %v", s.InSync, s.Findings())
	}
}

func TestSpecialFilesAreReportedNeverOpened(t *testing.T) {
	testenv.Require(t, testenv.Root)
	root := mixedTree(t)
	if err := unix.Mkfifo(root+"/fifo", 0o666); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", root+"/sub/sock")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A copy of /dev/null's node: opening it would be harmless, but the
	// point is that the walker never opens anything but directories.
	if err := unix.Mknod(root+"/null", unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{root + "/fifo", root + "/null"} {
		if err := os.Chmod(p, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	l := New(Deps{Log: testLogger(t)})
	done := make(chan error, 1)
	go func() { done <- l.Apply(context.Background(), testCfg(root)) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pass blocked: a FIFO was opened")
	}
	for _, p := range []string{"fifo", "null", "sub/sock"} {
		if a := lstat(t, filepath.Join(root, p)); a.mode&0o777 != 0o600 || a.uid != 0 {
			t.Errorf("%s not locked: %v", p, a.mode)
		}
	}
	s := l.Status()
	if s.LastOddFile == nil || !hasFinding(s, "special file") {
		t.Errorf("special files not reported: %+v %v", s.LastOddFile, s.Findings())
	}
	if !s.InSync {
		t.Errorf("special files are locked, so the folder should be in sync")
	}
}

// waitFor polls cond until it holds or the limit passes, and returns how
// long it took.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func lockedAs(p string, mode os.FileMode, uid, gid uint32) bool {
	var st unix.Stat_t
	if unix.Lstat(p, &st) != nil {
		return false
	}
	return os.FileMode(st.Mode&0o7777) == mode && st.Uid == uid && st.Gid == gid
}

func TestWatchFixesNewEntriesWithinASecond(t *testing.T) {
	testenv.Require(t, testenv.Root)
	root := mixedTree(t)
	l := New(Deps{Log: testLogger(t)})
	cfg := testCfg(root)
	cfg.Watch = true
	cfg.FullPassInterval = 0 // only events may do the work here
	if err := l.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	runLock(t, l)
	waitFor(t, 2*time.Second, "watching", func() bool { s := l.Status(); return s.Watching && s.Watches >= 6 })

	t.Run("new file of another uid", func(t *testing.T) {
		mk(t, root+"/new.png", 0o644, nobody, nobody)
		d := waitFor(t, time.Second, "new.png locked", func() bool { return lockedAs(root+"/new.png", 0o600, 0, 0) })
		t.Logf("locked after %v", d)
	})
	t.Run("mode changed on an existing file", func(t *testing.T) {
		if err := os.Chmod(root+"/a.png", 0o666); err != nil {
			t.Fatal(err)
		}
		waitFor(t, time.Second, "a.png locked again", func() bool { return lockedAs(root+"/a.png", 0o600, 0, 0) })
	})
	t.Run("folder itself changed", func(t *testing.T) {
		if err := os.Chmod(root, 0o777); err != nil {
			t.Fatal(err)
		}
		waitFor(t, time.Second, "root locked again", func() bool { return lockedAs(root, 0o700, 0, 0) })
	})
	t.Run("new subfolders and their files", func(t *testing.T) {
		// Files are written right after mkdir, before any watch can be on
		// the new folder: the rescan of a new folder must find them.
		mk(t, root+"/2026-12-03/", 0o755, nobody, nobody)
		mk(t, root+"/2026-12-03/x.png", 0o644, nobody, nobody)
		mk(t, root+"/a/b/c/", 0o777, nobody, nobody)
		mk(t, root+"/a/b/c/y.png", 0o644, nobody, nobody)
		time.Sleep(100 * time.Millisecond)
		mk(t, root+"/a/b/c/later.png", 0o644, nobody, nobody)
		waitFor(t, time.Second, "new tree locked", func() bool {
			for _, p := range []string{"2026-12-03", "a", "a/b", "a/b/c"} {
				if !lockedAs(filepath.Join(root, p), 0o700, 0, 0) {
					return false
				}
			}
			for _, p := range []string{"2026-12-03/x.png", "a/b/c/y.png", "a/b/c/later.png"} {
				if !lockedAs(filepath.Join(root, p), 0o600, 0, 0) {
					return false
				}
			}
			return true
		})
	})
	t.Run("file moved in", func(t *testing.T) {
		tmp := filepath.Join(filepath.Dir(root), "staging")
		mk(t, tmp+"/", 0o755, 0, 0)
		mk(t, tmp+"/moved.png", 0o666, otherUID, otherUID)
		if err := os.Rename(tmp+"/moved.png", root+"/sub/moved.png"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, time.Second, "moved.png locked", func() bool { return lockedAs(root+"/sub/moved.png", 0o600, 0, 0) })
	})
	t.Run("folder moved within the tree", func(t *testing.T) {
		if err := os.Rename(root+"/a", root+"/sub/a2"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // let the re-watch pass run
		mk(t, root+"/sub/a2/b/c/after-move.png", 0o644, nobody, nobody)
		waitFor(t, time.Second, "after-move.png locked", func() bool {
			return lockedAs(root+"/sub/a2/b/c/after-move.png", 0o600, 0, 0)
		})
	})
	assertLocked(t, root, 0, 0, 0o700, 0o600)

	t.Run("folder deleted and created again", func(t *testing.T) {
		if err := os.RemoveAll(root); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 2*time.Second, "root reported missing", func() bool { return !l.Status().Root.Exists })
		if !hasFinding(l.Status(), "cannot be locked") {
			t.Errorf("missing root gives no finding: %v", l.Status().Findings())
		}
		mk(t, root+"/", 0o755, nobody, nobody)
		mk(t, root+"/first.png", 0o644, nobody, nobody)
		d := waitFor(t, time.Second, "recreated folder locked", func() bool {
			return lockedAs(root, 0o700, 0, 0) && lockedAs(root+"/first.png", 0o600, 0, 0)
		})
		t.Logf("recreated folder locked after %v", d)
		waitFor(t, time.Second, "watching again", func() bool { s := l.Status(); return s.Watching && s.Watches >= 1 })
		mk(t, root+"/second/", 0o755, nobody, nobody)
		mk(t, root+"/second/z.png", 0o644, nobody, nobody)
		waitFor(t, time.Second, "new files in recreated folder locked", func() bool {
			return lockedAs(root+"/second", 0o700, 0, 0) && lockedAs(root+"/second/z.png", 0o600, 0, 0)
		})
		if s := l.Status(); !s.InSync || len(s.Findings()) != 0 {
			t.Errorf("after recreation: in_sync %v findings %v", s.InSync, s.Findings())
		}
	})
	t.Run("folder swapped for a symlink and back", func(t *testing.T) {
		out, snap := outsideTree(t)
		if err := os.RemoveAll(root); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(out, root); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 2*time.Second, "symlinked folder refused", func() bool { return hasFinding(l.Status(), "refusing to follow") })
		time.Sleep(300 * time.Millisecond) // a few polls
		assertUnchanged(t, snap, "root is a symlink")
		if err := os.Remove(root); err != nil {
			t.Fatal(err)
		}
		mk(t, root+"/", 0o777, nobody, nobody)
		mk(t, root+"/back.png", 0o666, nobody, nobody)
		waitFor(t, time.Second, "folder locked again", func() bool {
			return lockedAs(root, 0o700, 0, 0) && lockedAs(root+"/back.png", 0o600, 0, 0)
		})
		waitFor(t, time.Second, "watching again", func() bool { return l.Status().Watching })
		mk(t, root+"/after.png", 0o644, nobody, nobody)
		waitFor(t, time.Second, "new file locked", func() bool { return lockedAs(root+"/after.png", 0o600, 0, 0) })
	})
}

func TestQueueOverflowRunsFullPass(t *testing.T) {
	testenv.Require(t, testenv.Root)
	root := mixedTree(t)
	l := New(Deps{Log: testLogger(t)})
	cfg := testCfg(root)
	cfg.Watch = true
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := l.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	// Drive the loop's steps by hand: a watcher with no watches misses the
	// new file, as one does after its queue overflowed.
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gen++
	wt, err := newWatcher(ctx, l.gen, l.events)
	if err != nil {
		t.Fatal(err)
	}
	l.wt = wt
	defer l.stopWatch()
	mk(t, root+"/missed.png", 0o644, nobody, nobody)
	l.handle(ctx, batch{gen: wt.gen, events: []event{{wd: -1, mask: unix.IN_Q_OVERFLOW}}})
	if l.needPass != "inotify queue overflow" {
		t.Fatalf("overflow did not ask for a pass: %q", l.needPass)
	}
	l.housekeep(ctx)
	if s := l.Status(); s.LastPass == nil || s.LastPass.Reason != "inotify queue overflow" {
		t.Fatalf("no overflow pass: %+v", s.LastPass)
	}
	if !lockedAs(root+"/missed.png", 0o600, 0, 0) {
		t.Errorf("the overflow pass did not lock missed.png")
	}
	// Events from a closed watcher are dropped.
	l.handle(ctx, batch{gen: wt.gen + 1, events: []event{{wd: -1, mask: unix.IN_Q_OVERFLOW}}})
	if l.needPass != "" {
		t.Errorf("stale batch acted upon")
	}
}
