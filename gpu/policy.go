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

// limits resolves soft and hard limits for a device of total bytes. Mixed
// units (a percentage and a size) can only be ordered here; a soft limit
// above the hard one is lowered to it.
func (p policy) limits(total uint64) (soft, hard uint64) {
	soft, hard = p.soft.Of(total), p.hard.Of(total)
	return min(soft, hard), hard
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

// rateWindow is the shortest span a growth rate is measured over, so
// allocations that arrive in steps (sampled faster than they happen) still
// give a steady rate.
const rateWindow = 200 * time.Millisecond

// point is one past usage reading.
type point struct {
	at   time.Time
	used uint64
}

// deviceState is what the policy remembers about one device between
// samples. Its zero value is a device never seen.
type deviceState struct {
	hist      []point // recent readings, oldest first
	rate      float64 // bytes/s over the last interval (may be negative)
	sustained float64 // bytes/s the predictions trust (see sustainedRate)
	peakRate  float64 // decaying maximum of positive rates, for the sleep

	phase      phase
	phaseSince time.Time
	actionUsed uint64    // usage when the last interrupt was sent
	lastAction time.Time // zero: never acted
}

// last returns the newest reading.
func (s deviceState) last() (point, bool) {
	if len(s.hist) == 0 {
		return point{}, false
	}
	return s.hist[len(s.hist)-1], true
}

// windowRate is the growth rate from the newest reading that lies at least
// w before hist[end], up to hist[end]; k is that older reading's index.
func windowRate(h []point, end int, w time.Duration) (rate float64, k int, ok bool) {
	for k = end - 1; k >= 0; k-- {
		if dt := h[end].at.Sub(h[k].at); dt >= w {
			return (float64(h[end].used) - float64(h[k].used)) / dt.Seconds(), k, true
		}
	}
	return 0, 0, false
}

// sustainedRate is the growth rate the predictions trust: the smaller of
// the rates over the last two windows of at least w each, so a single step
// (a model being loaded) does not look like a runaway ramp, while a real
// ramp does, however it is sampled.
func sustainedRate(h []point, w time.Duration) float64 {
	if len(h) < 3 {
		return 0
	}
	r1, k, ok1 := windowRate(h, len(h)-1, w)
	if !ok1 {
		return 0
	}
	r2, _, ok2 := windowRate(h, k, w)
	if !ok2 {
		return 0
	}
	return math.Max(0, math.Min(r1, r2))
}

// decision is the outcome of one policy step.
type decision struct {
	action  actionKind
	trigger trigger
	reason  string
}

// observe folds a successful observation into the state: history, growth
// rates and the decaying peak rate. Failed observations leave it alone.
func observe(p policy, st deviceState, o observation) deviceState {
	if o.err != nil {
		return st
	}
	w := max(p.pollInterval, rateWindow)
	if prev, ok := st.last(); ok {
		dt := o.at.Sub(prev.at).Seconds()
		if dt <= 0.0005 {
			return st // the same instant twice: nothing to learn
		}
		st.rate = (float64(o.used) - float64(prev.used)) / dt
		decay := math.Pow(0.5, dt/rateHalfLife.Seconds())
		st.peakRate = math.Max(st.peakRate*decay, st.rate)
	}
	// Keep what two rate windows need, plus one reading before them.
	hist := append(st.hist[:len(st.hist):len(st.hist)], point{o.at, o.used})
	cut := 0
	for cut < len(hist)-3 && o.at.Sub(hist[cut+1].at) >= 2*w+w/2 {
		cut++
	}
	if len(hist)-cut > 256 {
		cut = len(hist) - 256
	}
	st.hist = hist[cut:]
	st.sustained = sustainedRate(st.hist, w)
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
	st = observe(p, st, o)
	now := o.at
	soft, hard := p.limits(o.total)
	rate := st.sustained

	overSoft := o.used >= soft
	predicted := p.predict > 0 && rate > 0 && float64(o.used)+rate*p.predict.Seconds() >= float64(hard)
	overHard := o.used >= hard
	predictedPoll := rate > 0 && float64(o.used)+rate*p.pollInterval.Seconds() >= float64(hard)

	coolingDown := !st.lastAction.IsZero() && now.Sub(st.lastAction) < p.cooldown

	// After a kill the process needs a moment to release its memory: stay
	// quiet for the cool-down, or until the memory is back under the soft
	// limit (then a new breach of the hard limit is a new spike, and is
	// acted on even within the cool-down).
	if st.phase == phaseKilled {
		if coolingDown && !(o.used < soft) {
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
		over := overSoft || predicted
		switch {
		case !over && o.used < st.actionUsed:
			// The interrupt worked: memory is going down.
			st.phase, st.phaseSince = phaseIdle, now
		case now.Sub(st.phaseSince) < p.grace:
			// Wait: the interrupt is cooperative, and takes a step to land.
		case over:
			return kill(trigGrace, fmt.Sprintf("memory %s still over soft limit %s (or heading for the hard limit) %s after the interrupt",
				fmtBytes(o.used), fmtBytes(soft), p.grace))
		case rate == 0:
			// Growth stopped below the soft limit by itself.
			st.phase, st.phaseSince = phaseIdle, now
		default:
			// Still growing, if slowly: stay on the ladder, so crossing
			// the soft limit later escalates at once.
		}
		return st, decision{}
	}

	if (overSoft || predicted) && !coolingDown {
		st.phase, st.phaseSince, st.lastAction, st.actionUsed = phaseInterrupted, now, now, o.used
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
	soft, hard := p.limits(fresh.total)
	switch d.trigger {
	case trigHard:
		return fresh.used >= hard
	case trigPredictPoll:
		// Still at least where the decision saw it, and still heading for
		// the hard limit within one poll at the rate seen then.
		prev, _ := st.last()
		return fresh.used >= prev.used &&
			float64(fresh.used)+st.sustained*p.pollInterval.Seconds() >= float64(hard)
	case trigGrace:
		prev, _ := st.last()
		return fresh.used >= soft || fresh.used >= prev.used
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
	soft, hard := p.limits(total)
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
