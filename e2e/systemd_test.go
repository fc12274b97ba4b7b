package e2e

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zguard/zguard/internal/testenv"
)

// TestSystemdNotify plays systemd's part: the agent must send READY=1 only
// after its first reconcile (the container is up), and WATCHDOG=1 pings
// when the unit has WatchdogSec.
func TestSystemdNotify(t *testing.T) {
	img := fakeImage(t)
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	port := FreePort(t)
	name := testenv.UniqueName("zg-e2e-notify-")
	a := StartAgent(t, name, baseConfig(img, port, ""), AgentOptions{
		NoWait: true,
		Env:    []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=400000"},
	})
	deadline := time.After(60 * time.Second)
	ready, pings := false, 0
	for !ready || pings < 2 {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatal("notify socket closed")
			}
			if strings.Contains(m, "READY=1") && !ready {
				ready = true
				// READY must come after the container is up.
				if c := Inspect(t, name); !c.State.Running {
					t.Fatalf("READY=1 sent before the container runs")
				}
			}
			if strings.Contains(m, "WATCHDOG=1") {
				pings++
			}
		case <-deadline:
			t.Fatalf("ready=%v pings=%d after 60s", ready, pings)
		}
	}
	_ = a
}
