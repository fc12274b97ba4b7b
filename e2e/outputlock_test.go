package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zguard/zguard/comfy"
	"github.com/zguard/zguard/internal/testenv"
	"github.com/zguard/zguard/outputlock"
)

// outputConfig runs the fake ComfyUI with {{DIR}}/output as its output
// folder and the output lock on it.
func outputConfig(image string, port int, fileMode string) string {
	return agentConfig(image, port, `volumes = ["{{DIR}}/output:/root/ComfyUI/output"]`, fmt.Sprintf(`
[output]
path = "{{DIR}}/output"
owner = "root"
group = "root"
dir_mode = "0700"
file_mode = %q
watch = true
symlinks = "remove"
`, fileMode))
}

func modeOwner(p string) (os.FileMode, uint32, uint32, bool) {
	var st unix.Stat_t
	if unix.Lstat(p, &st) != nil {
		return 0, 0, 0, false
	}
	return os.FileMode(st.Mode & 0o7777), st.Uid, st.Gid, true
}

// TestOutputLockThroughAgent runs the whole agent: the output folder does
// not exist until Docker creates it for the container's bind mount; the
// lock must pick it up, lock the images the container writes, re-apply new
// modes on `zguard reload`, remove a planted symlink, and report all of it
// in `zguard status --json`.
func TestOutputLockThroughAgent(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.Docker)
	img := fakeImage(t)
	port := FreePort(t)
	a := StartAgent(t, testenv.UniqueName("zg-e2e-output-"), outputConfig(img, port, "0600"))
	out := filepath.Join(a.Dir, "output")
	waitRunning(t, a)

	var st outputlock.Status
	WaitFor(t, 10*time.Second, "output folder locked", func() bool {
		a.Part("output", &st)
		m, uid, _, ok := modeOwner(out)
		return ok && m == 0o700 && uid == 0 && st.InSync && st.Root.Exists
	})
	if st.Path != out || st.Mode != "0700/0600" || st.Owner != "root:root" || !st.Watching {
		t.Errorf("output status: %+v", st)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := comfy.NewClient(fmt.Sprintf("http://127.0.0.1:%d", port))
	workflow := map[string]any{
		"1": map[string]any{"class_type": "KSampler", "inputs": map[string]any{"steps": 1}},
		"2": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"filename_prefix": "e2e/zg"}},
	}
	if _, err := c.Prompt(ctx, workflow); err != nil {
		t.Fatalf("queueing prompt: %v", err)
	}
	img1 := filepath.Join(out, "e2e", "zg_00001_.png")
	WaitFor(t, 20*time.Second, "image written and locked", func() bool {
		m, uid, gid, ok := modeOwner(img1)
		return ok && m == 0o600 && uid == 0 && gid == 0
	})

	// Reload with another file mode: applied to existing files at once.
	a.WriteConfig(a.Expand(outputConfig(img, port, "0640")))
	if res, code := a.CLI("reload"); code != 0 {
		t.Fatalf("reload: exit %d\n%s", code, res)
	}
	WaitFor(t, 5*time.Second, "new file mode applied", func() bool {
		m, _, _, _ := modeOwner(img1)
		return m == 0o640
	})

	// A planted symlink is removed and reported; its target is untouched.
	target := filepath.Join(a.Dir, "target")
	if err := os.WriteFile(target, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(target, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(out, "e2e", "evil")); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, 5*time.Second, "symlink removed", func() bool {
		_, err := os.Lstat(filepath.Join(out, "e2e", "evil"))
		return os.IsNotExist(err)
	})
	if m, uid, _, _ := modeOwner(target); m != 0o644 || uid != 1000 {
		t.Errorf("symlink target changed: %04o uid %d", m, uid)
	}
	res, _ := a.CLI("status", "--json")
	for _, want := range []string{`"in_sync": true`, `"last_symlink"`, `"removed"`, `symlink in output folder`} {
		if !strings.Contains(res, want) {
			t.Errorf("status --json lacks %s:\n%s", want, res)
		}
	}
}
