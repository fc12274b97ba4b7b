package gpu

import (
	"fmt"
	"math"
	"time"

	"github.com/zguard/zguard/config"
)

// This file is the watchdog's policy: pure functions from observations to
// decisions, with the time passed in. Nothing here does I/O.

// actionKind is what the policy asks the mechanism to do.
type actionKind string

const (
	actNone      actionKind = ""
	actInterrupt actionKind = "interrupt"
	actKill      actionKind = "kill"
)

// phase is where a device stands on the interrupt-then-kill ladder.
type phase string

const (
	phaseIdle        phase = "idle"
	phaseInterrupted phase = "interrupted" // waiting out the grace period
	phaseKilled      phase = "killed"      // cooling down after a kill
)

// trigger names the condition that made the policy act; a kill is
// re-checked against the same condition on fresh memory just before it.
type trigger string

const (
	trigSoft        trigger = "soft"         // over soft_limit
	trigPredict     trigger = "predict"      // hard_limit reached within `predict`
	trigGrace       trigger = "grace"        // still over soft_limit after grace
	trigHard        trigger = "hard"         // over hard_limit
	trigPredictPoll trigger = "predict-poll" // hard_limit reached within one poll
)

// policy is the decision half of config.GPU.
type policy struct {
	soft, hard   config.Limit
	grace        time.Duration
	predict      time.Duration // 0 = no prediction
	cooldown     time.Duration
	pollInterval time.Duration
}

func policyFrom(c config.GPU) policy {
	return policy{
		soft:         c.SoftLimit,
		hard:         c.HardLimit,
		grace:        c.Grace.D(),
		predict:      c.Predict.D(),
		cooldown:     c.Cooldown.D(),
		pollInterval: c.PollInterval.D(),
	}
}

// minSleep is the shortest pause between samples, however fast memory grows.
const minSleep = 20 * time.Millisecond

// rateHalfLife is how fast the peak growth rate used for the adaptive sleep
// forgets a burst.
const rateHalfLife = 2 * time.Second

// observation is one sample of one device, as the policy sees it.
type observation struct {
	at    time.Time
	used  uint64
	total uint64
	ours  bool  // the managed container has at least one process on the device
	err   error // the sample failed; used/total are meaningless
}

// deviceState is what the policy remembers about one device between
// samples. Its zero value is a device never seen.
type deviceState struct {
	prevAt   time.Time
	prevUsed uint64
	rate     float64 // bytes/s over the last interval (may be negative)
	lastRate float64 // bytes/s over the interval before
	peakRate float64 // decaying maximum of positive rates, for the sleep

	phase      phase
	phaseSince time.Time
	lastAction time.Time // zero: never acted
}

// sustainedRate is the growth rate the predictions trust: the smaller of
// the last two intervals' rates, so a single step (a model being loaded)
// does not look like a runaway ramp, while a real ramp does.
func (s deviceState) sustainedRate() float64 {
	r := math.Min(s.rate, s.lastRate)
	if r < 0 {
		return 0
	}
	return r
}

// decision is the outcome of one policy step.
type decision struct {
	action  actionKind
	trigger trigger
	reason  string
}

// observe folds a successful observation into the state: growth rates and
// the decaying peak rate. Failed observations leave the state alone.
func observe(st deviceState, o observation) deviceState {
	if o.err != nil {
		return st
	}
	if !st.prevAt.IsZero() {
		dt := o.at.Sub(st.prevAt).Seconds()
		if dt > 0.001 {
			r := (float64(o.used) - float64(st.prevUsed)) / dt
			st.lastRate, st.rate = st.rate, r
			decay := math.Pow(0.5, dt/rateHalfLife.Seconds())
			st.peakRate = math.Max(st.peakRate*decay, r)
		}
	}
	st.prevAt, st.prevUsed = o.at, o.used
	if st.phase == "" {
		st.phase = phaseIdle
	}
	return st
}

// decide runs one step of the ladder for one device:
//
//   - over soft_limit, or hard_limit predicted within `predict` -> interrupt;
//   - still over after `grace`, or over hard_limit, or hard_limit predicted
//     within one poll interval -> kill;
//   - after an action, `cooldown` keeps one spike to one action.
//
// Only devices where the managed container has processes are acted on.
// A failed sample never leads to an action: nothing is killed blind.
func decide(p policy, st deviceState, o observation) (deviceState, decision) {
	if o.err != nil {
		return st, decision{}
	}
	st = observe(st, o)
	now := o.at
	soft, hard := p.soft.Of(o.total), p.hard.Of(o.total)
	rate := st.sustainedRate()

	overSoft := o.used >= soft
	predicted := p.predict > 0 && rate > 0 && float64(o.used)+rate*p.predict.Seconds() >= float64(hard)
	overHard := o.used >= hard
	predictedPoll := rate > 0 && float64(o.used)+rate*p.pollInterval.Seconds() >= float64(hard)

	coolingDown := !st.lastAction.IsZero() && now.Sub(st.lastAction) < p.cooldown

	// After a kill the process needs a moment to release its memory: stay
	// quiet for the cool-down, then start over.
	if st.phase == phaseKilled {
		if coolingDown {
			return st, decision{}
		}
		st.phase, st.phaseSince = phaseIdle, now
	}
	if !o.ours {
		// Nothing of ours to act on; other users are shown, never touched.
		if st.phase == phaseInterrupted && !overSoft {
			st.phase, st.phaseSince = phaseIdle, now
		}
		return st, decision{}
	}

	kill := func(t trigger, reason string) (deviceState, decision) {
		return st, decision{action: actKill, trigger: t, reason: reason}
	}
	switch {
	case overHard:
		return kill(trigHard, fmt.Sprintf("memory %s reached hard limit %s", fmtBytes(o.used), fmtBytes(hard)))
	case predictedPoll:
		return kill(trigPredictPoll, fmt.Sprintf("memory %s growing %s/s reaches hard limit %s within one poll (%s)",
			fmtBytes(o.used), fmtBytes(uint64(rate)), fmtBytes(hard), p.pollInterval))
	}

	if st.phase == phaseInterrupted {
		if !overSoft && !predicted {
			// The interrupt worked.
			st.phase, st.phaseSince = phaseIdle, now
			return st, decision{}
		}
		if now.Sub(st.phaseSince) >= p.grace {
			return kill(trigGrace, fmt.Sprintf("memory %s still over soft limit %s %s after the interrupt",
				fmtBytes(o.used), fmtBytes(soft), p.grace))
		}
		return st, decision{}
	}

	if (overSoft || predicted) && !coolingDown {
		st.phase, st.phaseSince, st.lastAction = phaseInterrupted, now, now
		if overSoft {
			return st, decision{action: actInterrupt, trigger: trigSoft,
				reason: fmt.Sprintf("memory %s over soft limit %s", fmtBytes(o.used), fmtBytes(soft))}
		}
		return st, decision{action: actInterrupt, trigger: trigPredict,
			reason: fmt.Sprintf("memory %s growing %s/s reaches hard limit %s within %s",
				fmtBytes(o.used), fmtBytes(uint64(rate)), fmtBytes(hard), p.predict)}
	}
	return st, decision{}
}

// killed records that a kill was carried out at now.
func killed(st deviceState, now time.Time) deviceState {
	st.phase, st.phaseSince, st.lastAction = phaseKilled, now, now
	return st
}

// confirmKill re-checks a kill decision against memory read again just
// before the kill (earlyoom does the same): when usage already dropped
// below the condition that triggered it, the kill is called off.
func confirmKill(p policy, st deviceState, d decision, fresh observation) bool {
	if fresh.err != nil {
		return false
	}
	soft, hard := p.soft.Of(fresh.total), p.hard.Of(fresh.total)
	switch d.trigger {
	case trigHard:
		return fresh.used >= hard
	case trigPredictPoll:
		// Still at least where the decision saw it, and still heading for
		// the hard limit within one poll at the rate seen then.
		return fresh.used >= st.prevUsed &&
			float64(fresh.used)+st.sustainedRate()*p.pollInterval.Seconds() >= float64(hard)
	case trigGrace:
		return fresh.used >= soft || fresh.used >= st.prevUsed
	}
	return false
}

// nextSleep is the adaptive pause before the next sample: the time the
// fastest recently seen growth needs to close the headroom to the next
// limit, clamped to [minSleep, poll_interval]. An idle GPU is sampled at
// poll_interval; a filling one as often as every 20 ms.
func nextSleep(p policy, st deviceState, used, total uint64) time.Duration {
	max := p.pollInterval
	if max < minSleep {
		max = minSleep
	}
	if st.peakRate <= 0 {
		return max
	}
	soft, hard := p.soft.Of(total), p.hard.Of(total)
	var headroom float64
	switch {
	case used < soft:
		headroom = float64(soft - used)
	case used < hard:
		headroom = float64(hard - used)
	}
	d := time.Duration(headroom / st.peakRate * float64(time.Second))
	return min(max, maxDur(minSleep, d))
}

func maxDur(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

// jobTracker remembers when each running ComfyUI prompt was first seen,
// for max_job_runtime.
type jobTracker struct {
	firstSeen   map[string]time.Time
	interrupted map[string]bool
}

// overdueJobs updates the tracker with the prompts running now and returns
// those that have run longer than max and were not interrupted yet.
func overdueJobs(t jobTracker, running []string, now time.Time, max time.Duration) (jobTracker, []string) {
	next := jobTracker{firstSeen: map[string]time.Time{}, interrupted: map[string]bool{}}
	var overdue []string
	for _, id := range running {
		first, ok := t.firstSeen[id]
		if !ok {
			first = now
		}
		next.firstSeen[id] = first
		if t.interrupted[id] {
			next.interrupted[id] = true
			continue
		}
		if max > 0 && now.Sub(first) > max {
			overdue = append(overdue, id)
			next.interrupted[id] = true
		}
	}
	return next, overdue
}

// fmtBytes writes a size in binary units for log lines and reasons.
func fmtBytes(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%dB", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit && exp < 4; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(b)/float64(div), "KMGTP"[exp])
}
