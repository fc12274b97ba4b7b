package supervisor

import (
	"time"

	"github.com/zguard/zguard/config"
)

// Exit is one observed end of the container.
type Exit struct {
	Time      time.Time     `json:"time"`
	Code      int           `json:"exit_code"`
	OOMKilled bool          `json:"oom_killed"`
	Uptime    time.Duration `json:"uptime_ns"`
	Error     string        `json:"error,omitempty"`
}

// restartPlan is the policy's answer to "the container exited: now what?".
type restartPlan struct {
	Delay     time.Duration // wait this long before starting it again
	CrashLoop bool          // too many restarts within the window
}

// planRestart decides the delay before the next restart. It is pure: the
// history of exits (oldest first, including the latest one) and now in,
// the plan out.
//
// The first exit after a healthy run is restarted at once: one crash of a
// long-running ComfyUI (or the GPU watchdog's kill) should cost only the
// container's start time. Each further exit that follows a short run waits
// restart.initial, then twice that, and so on up to restart.max; a run that
// lasted restart.reset_after or longer starts the count over. A crash loop
// is restarts >= crash_loop.restarts within crash_loop.window; zguard keeps
// retrying at the backoff delay, but status goes CRITICAL.
func planRestart(exits []Exit, b config.Backoff, cl config.CrashLoop, now time.Time) restartPlan {
	failures := 0
	for i := len(exits) - 1; i >= 0; i-- {
		failures++
		if exits[i].Uptime >= b.ResetAfter.D() && b.ResetAfter > 0 {
			break
		}
	}
	if failures == 0 {
		failures = 1
	}
	var delay time.Duration
	if failures > 1 {
		delay = b.Initial.D()
		for i := 2; i < failures && delay < b.Max.D(); i++ {
			delay *= 2
		}
		if delay > b.Max.D() {
			delay = b.Max.D()
		}
	}
	inWindow := 0
	for _, e := range exits {
		if now.Sub(e.Time) <= cl.Window.D() {
			inWindow++
		}
	}
	return restartPlan{Delay: delay, CrashLoop: inWindow >= cl.Restarts}
}

// trimExits keeps the exits that can still matter: those within the
// crash-loop window, and at least the last few for status.
func trimExits(exits []Exit, window time.Duration, now time.Time) []Exit {
	const keep = 10
	start := 0
	for start < len(exits)-keep && now.Sub(exits[start].Time) > window {
		start++
	}
	if len(exits)-start > 64 {
		start = len(exits) - 64
	}
	return append([]Exit(nil), exits[start:]...)
}
