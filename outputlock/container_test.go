package outputlock

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"

	"github.com/zguard/zguard/comfy"
	"github.com/zguard/zguard/internal/testenv"
)

// TestContainerOutputsLockedAsTheyAppear runs the fake ComfyUI in Docker
// with the locked folder bind-mounted as its output directory, queues
// prompts, and checks that every image it writes is locked within a second
// and that ComfyUI (root in its container) still writes and serves them.
func TestContainerOutputsLockedAsTheyAppear(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.Docker)
	tag := testenv.FakeComfyImage(t, testenv.ImageSpec{Tag: "zguard-fakecomfy:outputlock-test"})
	cli, err := testenv.DockerClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	root := filepath.Join(t.TempDir(), "output")
	mk(t, root+"/", 0o755, 0, 0)
	l := New(Deps{Log: testLogger(t)})
	cfg := testCfg(root)
	cfg.Watch = true
	if err := l.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	runLock(t, l)

	port := nat.Port("8188/tcp")
	name := testenv.UniqueName("zg-outputlock-")
	created, err := cli.ContainerCreate(ctx,
		&container.Config{Image: tag, ExposedPorts: nat.PortSet{port: {}},
			Labels: map[string]string{"zguard.test": "outputlock"}},
		&container.HostConfig{
			Binds:        []string{root + ":/root/ComfyUI/output"},
			PortBindings: nat.PortMap{port: {{HostIP: "127.0.0.1", HostPort: ""}}},
		}, nil, nil, name)
	if err != nil {
		t.Fatalf("creating container: %v", err)
	}
	t.Cleanup(func() {
		rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer rcancel()
		if err := cli.ContainerRemove(rctx, created.ID, container.RemoveOptions{Force: true}); err != nil {
			t.Errorf("removing container %s: %v", name, err)
		}
	})
	if err := cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatalf("starting container: %v", err)
	}
	info, err := cli.ContainerInspect(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	bindings := info.NetworkSettings.Ports[port]
	if len(bindings) == 0 {
		t.Fatalf("port 8188 not published: %+v", info.NetworkSettings.Ports)
	}
	base := "http://127.0.0.1:" + bindings[0].HostPort
	c := comfy.NewClient(base)
	waitFor(t, 30*time.Second, "fake ComfyUI answering", func() bool {
		_, err := c.SystemStats(ctx)
		return err == nil
	})

	// Each prompt's image must appear, then be locked within a second of
	// appearing. The second one goes to a subfolder the container creates.
	for _, tc := range []struct{ prefix, file string }{
		{"zg", "zg_00001_.png"},
		{"day/zg", "day/zg_00002_.png"},
	} {
		workflow := map[string]any{
			"1": map[string]any{"class_type": "KSampler", "inputs": map[string]any{"steps": 2}},
			"2": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"filename_prefix": tc.prefix}},
		}
		if _, err := c.Prompt(ctx, workflow); err != nil {
			t.Fatalf("queueing prompt: %v", err)
		}
		p := filepath.Join(root, tc.file)
		waitFor(t, 30*time.Second, tc.file+" written", func() bool {
			_, err := os.Lstat(p)
			return err == nil
		})
		d := waitFor(t, time.Second, tc.file+" locked", func() bool {
			return lockedAs(p, 0o600, 0, 0) && lockedAs(filepath.Dir(p), 0o700, 0, 0)
		})
		t.Logf("%s locked %v after it appeared", tc.file, d)
		// The whole image is there (the container went on writing after
		// the lock changed the mode) and ComfyUI can still serve it.
		waitFor(t, 5*time.Second, tc.file+" complete", func() bool {
			b, err := os.ReadFile(p)
			return err == nil && bytes.HasPrefix(b, []byte("\x89PNG")) && bytes.Contains(b, []byte("IEND"))
		})
		dir, file := filepath.Split(tc.file)
		resp, err := http.Get(base + "/view?type=output&filename=" + file + "&subfolder=" + strings.TrimSuffix(dir, "/"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.HasPrefix(body, []byte("\x89PNG")) {
			t.Errorf("/view of %s: %d %q", tc.file, resp.StatusCode, body[:min(len(body), 40)])
		}
	}
	assertLocked(t, root, 0, 0, 0o700, 0o600)
	if s := l.Status(); !s.InSync || s.Watched.Fixed < 3 {
		t.Errorf("status: in_sync %v, watcher fixed %d (want true, >= 3)", s.InSync, s.Watched.Fixed)
	}
}
