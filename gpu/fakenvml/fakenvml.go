// Package fakenvml builds and drives a fake libnvidia-ml.so.1 for tests, so
// the watchdog's real cgo/dlopen path through go-nvml runs on machines
// without a GPU. The C source is gpu/testdata/fakenvml/fakenvml.c; the
// library reads its "GPU" from a state file that tests rewrite.
package fakenvml

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// Device is one fake GPU.
type Device struct {
	Index       int
	Name, UUID  string // defaults: "Fake GPU N", "GPU-fake-...N"
	Total, Used uint64
	// Error is an NVML return code every call on the device answers with,
	// e.g. 15 (ERROR_GPU_IS_LOST).
	Error int
	// NoV2 makes nvmlDeviceGetMemoryInfo_v2 answer NOT_SUPPORTED.
	NoV2 bool
}

// Proc is one compute process on a fake GPU.
type Proc struct {
	Device int
	PID    int
	// Memory in bytes; -1 is NVML_VALUE_NOT_AVAILABLE.
	Memory int64
}

// XID is an XID critical error event; each Seq is delivered once, in
// order, to an event set the device was registered with.
type XID struct {
	Device int
	Code   int
	Seq    int
}

// State is what the fake library reports.
type State struct {
	InitError int    // nvmlInit's return code
	Driver    string // default "999.99.99-fake"
	Devices   []Device
	Procs     []Proc
	XIDs      []XID
}

// Write replaces the state file at path atomically, so the library never
// reads half a file.
func (s State) Write(path string) error {
	var b strings.Builder
	if s.InitError != 0 {
		fmt.Fprintf(&b, "init_error %d\n", s.InitError)
	}
	if s.Driver != "" {
		fmt.Fprintf(&b, "driver %s\n", s.Driver)
	}
	for _, d := range s.Devices {
		fmt.Fprintf(&b, "dev %d total %d used %d", d.Index, d.Total, d.Used)
		if d.Error != 0 {
			fmt.Fprintf(&b, " error %d", d.Error)
		}
		if d.NoV2 {
			b.WriteString(" v2 0")
		}
		if d.Name != "" {
			fmt.Fprintf(&b, " name %s", strings.ReplaceAll(d.Name, " ", "_"))
		}
		if d.UUID != "" {
			fmt.Fprintf(&b, " uuid %s", d.UUID)
		}
		b.WriteString("\n")
	}
	for _, p := range s.Procs {
		fmt.Fprintf(&b, "proc %d %d %d\n", p.Device, p.PID, p.Memory)
	}
	for _, x := range s.XIDs {
		fmt.Fprintf(&b, "xid %d %d %d\n", x.Device, x.Code, x.Seq)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("writing fake NVML state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replacing fake NVML state: %w", err)
	}
	return nil
}

// Source is the path of the fake library's C source.
func Source() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "testdata", "fakenvml", "fakenvml.c")
}

// Build compiles the fake library with gcc into dir and returns the
// library's path and the state file it reads (dir/nvml.state, which starts
// out holding initial). Use it when another process loads the library
// (the zguard binary in end-to-end tests).
func Build(t testing.TB, dir string, initial State) (lib, state string) {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed; the fake NVML library cannot be built")
	}
	lib = filepath.Join(dir, "libnvidia-ml.so.1")
	state = filepath.Join(dir, "nvml.state")
	if err := initial.Write(state); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("gcc", "-shared", "-fPIC", "-O1", "-Wall",
		fmt.Sprintf("-DFAKE_NVML_STATE=%q", state), "-o", lib, Source(), "-ldl")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building fake NVML library: %v\n%s", err, out)
	}
	return lib, state
}

var shared struct {
	sync.Mutex
	dir, lib string
}

// Shared returns the one fake library this test process loads itself, and
// a fresh state file for the calling test (pointed to by FAKE_NVML_STATE
// for the test's duration). One library per process: go-nvml binds NVML's
// symbols to the first library loaded, for the life of the process.
// Call RemoveShared from TestMain when the tests are done.
func Shared(t *testing.T, initial State) (lib, state string) {
	t.Helper()
	shared.Lock()
	defer shared.Unlock()
	if shared.lib == "" {
		dir, err := os.MkdirTemp("", "zguard-fakenvml-")
		if err != nil {
			t.Fatal(err)
		}
		shared.dir = dir
		shared.lib, _ = Build(t, dir, State{})
	}
	state = filepath.Join(t.TempDir(), "nvml.state")
	if err := initial.Write(state); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKE_NVML_STATE", state)
	return shared.lib, state
}

// RemoveShared deletes the shared library's directory.
func RemoveShared() {
	shared.Lock()
	defer shared.Unlock()
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}
