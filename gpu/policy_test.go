package gpu

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/zguard/zguard/config"
)

const gib = 1 << 30

// testPolicy is the documented default: 90% / 97%, grace 5s, predict 2s,
// cool-down 10s, poll 250ms.
func testPolicy() policy {
	return policyFrom(config.GPU{
		SoftLimit: config.Limit{Percent: 90}, HardLimit: config.Limit{Percent: 97},
		Grace: config.Duration(5 * time.Second), Predict: config.Duration(2 * time.Second),
		Cooldown: config.Duration(10 * time.Second), PollInterval: config.Duration(250 * time.Millisecond),
	})
}

// step is one sample in a scripted scenario: at offset `at`, usage is
// used GiB (of 80 GiB); ours says whether the managed container is on it.
type step struct {
	at   time.Duration
	used float64
	ours bool
	err  error
}

// event is an action the policy took, for comparison.
type event struct {
	at      time.Duration
	action  actionKind
	trigger trigger
}

func (e event) String() string { return fmt.Sprintf("%s:%s@%s", e.action, e.trigger, e.at) }

// ramp samples every 250ms from `from` to `to` (offsets) with usage
// start + rate*t GiB, capped at capGiB.
func ramp(from, to time.Duration, start, rate, capGiB float64) []step {
	var s []step
	for t := from; t <= to; t += 250 * time.Millisecond {
		u := start + rate*(t-from).Seconds()
		if u > capGiB {
			u = capGiB
		}
		s = append(s, step{at: t, used: u, ours: true})
	}
	return s
}

func flat(from, to time.Duration, used float64, ours bool) []step {
	var s []step
	for t := from; t <= to; t += 250 * time.Millisecond {
		s = append(s, step{at: t, used: used, ours: ours})
	}
	return s
}

func concat(parts ...[]step) []step {
	var out []step
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// run plays a scenario through decide; kills are assumed confirmed (the
// re-read is tested in TestConfirmKill) and, like a real kill, drop the
// usage to `afterKill` GiB for the rest of the scenario when afterKill >= 0.
func run(p policy, steps []step, afterKill float64) []event {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var st deviceState
	var evs []event
	killedAt := time.Duration(-1)
	for _, s := range steps {
		used := s.used
		if killedAt >= 0 && afterKill >= 0 {
			used = afterKill
		}
		o := observation{at: t0.Add(s.at), used: uint64(used * gib), total: 80 * gib, ours: s.ours, err: s.err}
		var d decision
		st, d = decide(p, st, o)
		if d.action == actNone {
			continue
		}
		evs = append(evs, event{s.at, d.action, d.trigger})
		if d.action == actKill {
			st = killed(st, o.at)
			killedAt = s.at
		}
	}
	return evs
}

func TestDecide(t *testing.T) {
	s := time.Second
	ms := time.Millisecond
	errNVML := errors.New("nvml: unknown error")
	cases := map[string]struct {
		steps     []step
		afterKill float64 // usage after a kill; -1 = unchanged
		want      []event
	}{
		"steady": {
			steps: flat(0, 30*s, 40, true),
			want:  nil,
		},
		"idle GPU near but under the soft limit": {
			steps: flat(0, 30*s, 71, true),
			want:  nil,
		},
		"slow ramp interrupts at soft, kills after grace": {
			// 1 GiB/s from 60 GiB: soft (72) at 12s, grace ends at 17s
			// before hard (77.6) would be reached at 17.6s.
			steps:     ramp(0, 20*s, 60, 1, 80),
			afterKill: 5,
			want:      []event{{12 * s, actInterrupt, trigSoft}, {17 * s, actKill, trigGrace}},
		},
		"fast ramp: prediction fires before the soft limit": {
			// 10 GiB/s from 20 GiB: 60 GiB + 2s*10 GiB/s >= 77.6 at 4s, far
			// below soft (72); then hard within one poll at 75.1+ -> 5.75s.
			steps:     ramp(0, 8*s, 20, 10, 80),
			afterKill: 5,
			want:      []event{{4 * s, actInterrupt, trigPredict}, {5750 * ms, actKill, trigPredictPoll}},
		},
		"very fast ramp is killed before it reaches the hard limit": {
			// 50 GiB/s: interrupt as soon as two intervals agree, kill at 75 GiB
			// because the next poll would pass the hard limit.
			steps:     ramp(0, 2*s, 0, 50, 80),
			afterKill: 5,
			want:      []event{{500 * ms, actInterrupt, trigPredict}, {1500 * ms, actKill, trigPredictPoll}},
		},
		"growth stops below soft after a predicted interrupt: no kill": {
			steps: concat(ramp(0, 4*s, 20, 10, 80), flat(4250*ms, 20*s, 60, true)),
			want:  []event{{4 * s, actInterrupt, trigPredict}},
		},
		"slow growth after the interrupt keeps the ladder: crossing soft later kills at once": {
			// Predicted interrupt at 4s, then 0.5 GiB/s: soft (72) at 28s.
			steps:     concat(ramp(0, 4*s, 20, 10, 80), ramp(4250*ms, 30*s, 60.125, 0.5, 80)),
			afterKill: 5,
			want:      []event{{4 * s, actInterrupt, trigPredict}, {28 * s, actKill, trigGrace}},
		},
		"spike and drop: one interrupt, no kill": {
			steps: concat(flat(0, 2*s, 40, true), []step{{at: 2250 * ms, used: 75, ours: true}}, flat(2500*ms, 20*s, 40, true)),
			want:  []event{{2250 * ms, actInterrupt, trigSoft}},
		},
		"a model load (one big step) is not a ramp": {
			steps: concat(flat(0, 2*s, 2, true), flat(2250*ms, 20*s, 60, true)),
			want:  nil,
		},
		"interrupt works: memory drops within grace, no kill": {
			steps: concat(ramp(0, 3*s, 70, 1, 80), flat(3250*ms, 20*s, 30, true)),
			want:  []event{{2 * s, actInterrupt, trigSoft}},
		},
		"interrupt ignored: kill after grace": {
			steps:     flat(0, 20*s, 74, true),
			afterKill: 5,
			want:      []event{{0, actInterrupt, trigSoft}, {5 * s, actKill, trigGrace}},
		},
		"over the hard limit at once: kill without waiting": {
			steps:     flat(0, 5*s, 79, true),
			afterKill: 5,
			want:      []event{{0, actKill, trigHard}},
		},
		"after a kill the cool-down keeps one spike to one action": {
			// The dying process holds its memory for a few seconds.
			steps:     flat(0, 8*s, 79, true),
			afterKill: -1,
			want:      []event{{0, actKill, trigHard}},
		},
		"after the cool-down a new breach is acted on again": {
			steps:     flat(0, 12*s, 79, true),
			afterKill: -1,
			want:      []event{{0, actKill, trigHard}, {10 * s, actKill, trigHard}},
		},
		"after a kill released the memory, a new hard breach inside the cool-down is killed": {
			steps:     concat(flat(0, 1*s, 79, true), flat(1250*ms, 2*s, 20, true), flat(2250*ms, 3*s, 79, true)),
			afterKill: -1,
			want:      []event{{0, actKill, trigHard}, {2250 * ms, actKill, trigHard}},
		},
		"a new rise inside the cool-down after a working interrupt waits": {
			steps: concat(flat(0, 1*s, 74, true), flat(1250*ms, 4*s, 30, true), flat(4250*ms, 12*s, 74, true)),
			want:  []event{{0, actInterrupt, trigSoft}, {10 * s, actInterrupt, trigSoft}},
		},
		"two containers: the other one filling the GPU is never acted on": {
			steps: flat(0, 20*s, 79, false),
			want:  nil,
		},
		"NVML errors never lead to an action": {
			steps: []step{{at: 0, used: 79, ours: true, err: errNVML}, {at: s, used: 79, ours: true, err: errNVML}},
			want:  nil,
		},
		"NVML errors mid-stream: the ladder resumes on the next good sample": {
			steps: concat(
				flat(0, 1*s, 74, true),
				[]step{{at: 2 * s, err: errNVML, ours: true}, {at: 4 * s, err: errNVML, ours: true}},
				flat(6*s, 8*s, 74, true)),
			afterKill: 5,
			want:      []event{{0, actInterrupt, trigSoft}, {6 * s, actKill, trigGrace}},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ak := tc.afterKill
			got := run(testPolicy(), tc.steps, ak)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("events = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestConfirmKill(t *testing.T) {
	p := testPolicy()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rising := deviceState{hist: []point{{now, 76 * gib}}, sustained: 10 * gib}
	cases := map[string]struct {
		st    deviceState
		d     decision
		fresh observation
		want  bool
	}{
		"hard: still over":            {d: decision{actKill, trigHard, ""}, fresh: observation{used: 79 * gib, total: 80 * gib}, want: true},
		"hard: dropped":               {d: decision{actKill, trigHard, ""}, fresh: observation{used: 40 * gib, total: 80 * gib}, want: false},
		"re-read failed: no kill":     {d: decision{actKill, trigHard, ""}, fresh: observation{err: errors.New("x")}, want: false},
		"predict-poll: still rising":  {st: rising, d: decision{actKill, trigPredictPoll, ""}, fresh: observation{used: 77 * gib, total: 80 * gib}, want: true},
		"predict-poll: turned around": {st: rising, d: decision{actKill, trigPredictPoll, ""}, fresh: observation{used: 70 * gib, total: 80 * gib}, want: false},
		"grace: still over soft":      {st: deviceState{hist: []point{{now, 74 * gib}}}, d: decision{actKill, trigGrace, ""}, fresh: observation{used: 74 * gib, total: 80 * gib}, want: true},
		"grace: dropped":              {st: deviceState{hist: []point{{now, 74 * gib}}}, d: decision{actKill, trigGrace, ""}, fresh: observation{used: 20 * gib, total: 80 * gib}, want: false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			tc.fresh.at = now
			if got := confirmKill(p, tc.st, tc.d, tc.fresh); got != tc.want {
				t.Errorf("confirmKill = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNextSleep(t *testing.T) {
	p := testPolicy() // soft 72 GiB, hard 77.6 GiB of 80
	cases := map[string]struct {
		peak float64 // bytes/s
		used uint64
		want time.Duration
	}{
		"idle: poll interval":              {peak: 0, used: 10 * gib, want: 250 * time.Millisecond},
		"slow growth far away: poll":       {peak: 1 * gib, used: 10 * gib, want: 250 * time.Millisecond},
		"fast growth: headroom/rate":       {peak: 100 * gib, used: 62 * gib, want: 100 * time.Millisecond},
		"very fast growth: 20ms floor":     {peak: 1000 * gib, used: 71 * gib, want: 20 * time.Millisecond},
		"between soft and hard: to hard":   {peak: 10 * gib, used: 76 * gib, want: 160 * time.Millisecond},
		"over hard while growing: minimum": {peak: 1 * gib, used: 79 * gib, want: 20 * time.Millisecond},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got := nextSleep(p, deviceState{peakRate: tc.peak}, tc.used, 80*gib)
			if d := got - tc.want; d < -time.Millisecond || d > time.Millisecond {
				t.Errorf("nextSleep = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestOverdueJobs(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var jt jobTracker
	var got []string
	steps := []struct {
		at      time.Duration
		running []string
		want    []string
	}{
		{0, []string{"a"}, nil},
		{30 * time.Second, []string{"a", "b"}, nil},
		{61 * time.Second, []string{"a", "b"}, []string{"a"}},
		{62 * time.Second, []string{"a", "b"}, nil}, // a only once
		{95 * time.Second, []string{"b"}, []string{"b"}},
		{96 * time.Second, []string{"a"}, nil}, // a again: a new run of the same id starts over
	}
	for i, s := range steps {
		jt, got = overdueJobs(jt, s.running, t0.Add(s.at), time.Minute)
		if !reflect.DeepEqual(got, s.want) {
			t.Errorf("step %d: overdue = %v, want %v", i, got, s.want)
		}
	}
}

func TestFmtBytes(t *testing.T) {
	cases := map[uint64]string{512: "512B", 2048: "2.0KiB", 80 * gib: "80.0GiB", 1536 << 20: "1.5GiB"}
	for in, want := range cases {
		if got := fmtBytes(in); got != want {
			t.Errorf("fmtBytes(%d) = %q, want %q", in, got, want)
		}
	}
}

// A ramp whose allocations arrive in steps every 40ms, sampled every 20ms
// (the adaptive sleep's floor): half the intervals show no growth. The
// windowed rate must still see the ramp: one interrupt, then one kill
// before the device is full.
func TestDecideStaircaseRamp(t *testing.T) {
	p := testPolicy()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var st deviceState
	var evs []event
	for i := 0; i < 400; i++ {
		at := time.Duration(i) * 20 * time.Millisecond
		used := 10*gib + uint64(i/2)*gib/2 // +0.5 GiB every 40ms = 12.5 GiB/s
		if used > 80*gib {
			t.Fatalf("the device filled up; events so far %v", evs)
		}
		var d decision
		st, d = decide(p, st, observation{at: t0.Add(at), used: used, total: 80 * gib, ours: true})
		if d.action != actNone {
			evs = append(evs, event{at, d.action, d.trigger})
		}
		if d.action == actKill {
			break
		}
	}
	if len(evs) != 2 || evs[0].action != actInterrupt || evs[0].trigger != trigPredict || evs[1].action != actKill {
		t.Errorf("events = %v, want one predicted interrupt, then a kill", evs)
	}
}
