package gpu

import (
	"fmt"
	"syscall"
)

// SignalKiller kills processes with SIGKILL. ComfyUI's CUDA memory is only
// given back when its process ends, and a process near OOM may not get to
// handle a gentler signal in time.
type SignalKiller struct{}

// Kill sends SIGKILL to pid.
func (SignalKiller) Kill(pid int) error {
	if pid <= 1 {
		return fmt.Errorf("refusing to kill pid %d", pid)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("sending SIGKILL to pid %d: %w", pid, err)
	}
	return nil
}
