package supervisor

import (
	"fmt"
	"sort"
	"time"

	"github.com/zguard/zguard/health"
)

// Container states, as reported in status.
const (
	StateRunning    = "running"
	StateStarting   = "starting"
	StateRestarting = "restarting"
	StateCrashLoop  = "crashloop"
	StateStopped    = "stopped"
	StateMissing    = "missing"
)

// PortStatus is one live port binding.
type PortStatus struct {
	Container int    `json:"container"`
	Protocol  string `json:"protocol"`
	HostIP    string `json:"host_ip"`
	HostPort  int    `json:"host_port"`
}

// UpdateRecord is the outcome of the last update check.
type UpdateRecord struct {
	Time   time.Time `json:"time"`
	Result string    `json:"result"` // unchanged | updated | rolled_back | failed | skipped
	From   string    `json:"from,omitempty"`
	To     string    `json:"to,omitempty"`
	Error  string    `json:"error,omitempty"`
}

// Drift is the last difference from the spec that zguard repaired.
type Drift struct {
	Time time.Time `json:"time"`
	What string    `json:"what"`
}

// Status is the supervisor's part of `zguard status`.
type Status struct {
	Name          string        `json:"name"`
	ID            string        `json:"id"`
	Image         string        `json:"image"`
	ImageID       string        `json:"image_id"`
	State         string        `json:"state"`
	Health        string        `json:"health"`
	Restarts      int           `json:"restarts"`
	Pid           int           `json:"pid,omitempty"`
	StartedAt     time.Time     `json:"started_at,omitzero"`
	Ports         []PortStatus  `json:"ports"`
	LastUpdate    *UpdateRecord `json:"last_update"`
	LastCheck     *UpdateRecord `json:"last_check,omitempty"`
	InSync        bool          `json:"in_sync"`
	LastDrift     *Drift        `json:"last_drift,omitempty"`
	Conflict      string        `json:"conflict,omitempty"`
	CrashLoop     bool          `json:"crash_loop"`
	LastExits     []Exit        `json:"last_exits,omitempty"`
	RestartDelays []string      `json:"restart_delays,omitempty"`
	NextRestart   time.Time     `json:"next_restart,omitzero"`
	OOMKills      int           `json:"oom_kills"`
	LogTail       []string      `json:"log_tail,omitempty"`
	Docker        string        `json:"docker"` // ok | unreachable | connecting
	DockerError   string        `json:"docker_error,omitempty"`
	DockerVersion string        `json:"docker_version,omitempty"`
	DockerAPI     string        `json:"docker_api,omitempty"`
	Error         string        `json:"error,omitempty"`
}

// Status returns a copy of the current state.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.Ports = append([]PortStatus(nil), s.st.Ports...)
	st.LogTail = append([]string(nil), s.st.LogTail...)
	if n := len(s.exits); n > 0 {
		st.LastExits = append([]Exit(nil), s.exits[max(0, n-5):]...)
	}
	for _, d := range s.delays {
		st.RestartDelays = append(st.RestartDelays, d.String())
	}
	st.NextRestart = s.restartAt
	if s.st.LastUpdate != nil {
		u := *s.st.LastUpdate
		st.LastUpdate = &u
	}
	if s.st.LastCheck != nil {
		u := *s.st.LastCheck
		st.LastCheck = &u
	}
	return st
}

// Findings says what is wrong, for the overall status.
func (st Status) Findings() []health.Finding {
	const sub = "container"
	var f []health.Finding
	if st.Docker == "unreachable" {
		f = append(f, health.Warn(sub, "docker: unreachable: "+st.DockerError))
		return f
	}
	if st.Conflict != "" {
		f = append(f, health.Crit(sub, st.Conflict))
	}
	switch st.State {
	case StateRunning:
		if st.Health == "unhealthy" {
			f = append(f, health.Warn(sub, "container is running but unhealthy"))
		}
	case StateStarting:
		f = append(f, health.Warn(sub, "container is starting"))
	case StateCrashLoop:
		f = append(f, health.Crit(sub, fmt.Sprintf("container is crash-looping (%d restarts)", st.Restarts)))
	default:
		if st.Conflict == "" {
			msg := "container is " + st.State
			if st.Error != "" {
				msg += ": " + st.Error
			}
			f = append(f, health.Crit(sub, msg))
		}
	}
	if !st.InSync && st.State != StateMissing && st.Conflict == "" {
		f = append(f, health.Warn(sub, "container differs from its spec (being repaired)"))
	}
	if u := st.LastUpdate; u != nil {
		switch u.Result {
		case "failed":
			f = append(f, health.Warn(sub, "last update check failed: "+u.Error))
		case "rolled_back":
			f = append(f, health.Warn(sub, "last update was rolled back: "+u.Error))
		}
	}
	if st.Error != "" && st.State == StateRunning {
		f = append(f, health.Warn(sub, st.Error))
	}
	return f
}

func sortPorts(p []PortStatus) {
	sort.Slice(p, func(i, j int) bool {
		if p[i].Container != p[j].Container {
			return p[i].Container < p[j].Container
		}
		return p[i].HostIP < p[j].HostIP
	})
}
