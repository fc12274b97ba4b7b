package gpu

import (
	"fmt"
	"time"

	"github.com/zguard/zguard/health"
)

// Status is the watchdog's part of `zguard status --json`.
type Status struct {
	// Enabled is false when [gpu] enabled = false.
	Enabled bool `json:"enabled"`
	// Available says whether NVML could be used; Reason says why not.
	Available bool   `json:"available"`
	Reason    string `json:"reason,omitempty"`
	// Driver is the NVIDIA driver version NVML reports.
	Driver  string         `json:"driver_version,omitempty"`
	Devices []DeviceStatus `json:"devices"`
	// Actions are the most recent interrupts and kills, oldest first.
	Actions []Action `json:"actions"`
	// Sleep is the current adaptive pause between samples.
	Sleep      string    `json:"sleep,omitempty"`
	LastSample time.Time `json:"last_sample,omitzero"`
	// Container is the managed container's ID, as the supervisor says.
	Container string   `json:"container,omitempty"`
	Counters  Counters `json:"counters"`
	// LibraryRequested is the configured nvml_library ("" = the system's).
	LibraryRequested string `json:"nvml_library,omitempty"`
	// InitError is set when the library was found but NVML did not start.
	InitError string `json:"init_error,omitempty"`
	// Note carries advice, e.g. that a changed nvml_library needs a restart.
	Note string `json:"note,omitempty"`
	// XIDWatch is "on", or why XID events are not watched.
	XIDWatch string `json:"xid_watch,omitempty"`
	// XIDEvents are the most recent XID critical errors, oldest first.
	XIDEvents []XIDEvent `json:"xid_events,omitempty"`
}

// Counters are monotonic counts since the agent started, for metrics.
type Counters struct {
	Samples      uint64 `json:"samples"`
	SampleErrors uint64 `json:"sample_errors"`
	Interrupts   uint64 `json:"interrupts"`
	Kills        uint64 `json:"kills"`
	KillsSkipped uint64 `json:"kills_skipped"`
}

// DeviceStatus is one GPU.
type DeviceStatus struct {
	Index       int    `json:"index"`
	Name        string `json:"name"`
	UUID        string `json:"uuid"`
	MemoryUsed  uint64 `json:"memory_used"`
	MemoryTotal uint64 `json:"memory_total"`
	// SoftLimit and HardLimit are the configured limits in bytes.
	SoftLimit uint64 `json:"soft_limit"`
	HardLimit uint64 `json:"hard_limit"`
	// GrowthRate is memory growth in bytes per second over the last interval.
	GrowthRate float64   `json:"growth_rate"`
	Phase      string    `json:"phase"`
	Lost       bool      `json:"lost,omitempty"`
	Error      string    `json:"error,omitempty"`
	Processes  []Process `json:"processes"`
}

// Process is one process using a GPU.
type Process struct {
	PID int `json:"pid"`
	// Memory is its GPU memory in bytes; MemoryUnknown is set when NVML
	// could not tell (VALUE_NOT_AVAILABLE).
	Memory        uint64 `json:"memory"`
	MemoryUnknown bool   `json:"memory_unknown,omitempty"`
	// Container is the 64-hex container ID, "" outside containers.
	Container string `json:"container"`
	// Ours marks processes of the managed container, the only ones acted on.
	Ours bool `json:"ours"`
}

// Action is one thing the watchdog did (or called off).
type Action struct {
	Time time.Time `json:"time"`
	// Action is "interrupt", "kill" or "kill_skipped".
	Action string `json:"action"`
	Device int    `json:"device"`
	PID    int    `json:"pid,omitempty"`
	// Memory is the device's used memory when the action was taken.
	Memory uint64 `json:"memory"`
	Reason string `json:"reason"`
	// Error is set when the action failed (ComfyUI unreachable, kill refused).
	Error string `json:"error,omitempty"`
}

// Findings says what an operator should know. No NVML at all is a plain
// fact (the reason shows in the status), not a problem; a library that is
// there but fails, a sampling error, or a device over its soft limit is a
// warning; a lost GPU is critical. XIDs of failing hardware seen within the
// last hour are warnings, XID 79 (fallen off the bus) is critical.
func (s Status) Findings() []health.Finding {
	const sub = "gpu"
	if !s.Enabled {
		return nil
	}
	var fs []health.Finding
	if !s.Available {
		if s.InitError != "" {
			fs = append(fs, health.Warn(sub, "NVML is installed but does not start: "+s.InitError))
		} else if s.LibraryRequested != "" && s.Reason != "" && s.Reason != reasonStarting {
			fs = append(fs, health.Warn(sub, fmt.Sprintf("configured nvml_library %s cannot be used: %s", s.LibraryRequested, s.Reason)))
		}
		return fs
	}
	ref := s.LastSample
	for _, e := range s.XIDEvents {
		if e.Time.After(ref) {
			ref = e.Time
		}
	}
	fs = append(fs, xidFindings(s.XIDEvents, ref)...)
	for _, d := range s.Devices {
		switch {
		case d.Lost:
			fs = append(fs, health.Crit(sub, fmt.Sprintf("GPU %d (%s) is lost: %s", d.Index, d.UUID, d.Error)))
		case d.Error != "":
			fs = append(fs, health.Warn(sub, fmt.Sprintf("GPU %d cannot be read: %s", d.Index, d.Error)))
		case d.SoftLimit > 0 && d.MemoryUsed >= d.SoftLimit:
			fs = append(fs, health.Warn(sub, fmt.Sprintf("GPU %d memory %s is over the soft limit %s",
				d.Index, fmtBytes(d.MemoryUsed), fmtBytes(d.SoftLimit))))
		}
	}
	return fs
}

const reasonStarting = "watchdog not started yet"
