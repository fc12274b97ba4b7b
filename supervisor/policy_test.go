package supervisor

import (
	"testing"
	"time"

	"github.com/zguard/zguard/config"
)

func TestPlanRestart(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := config.Backoff{Initial: config.Duration(time.Second), Max: config.Duration(30 * time.Second), ResetAfter: config.Duration(10 * time.Minute)}
	cl := config.CrashLoop{Restarts: 5, Window: config.Duration(10 * time.Minute)}
	short := func(at time.Duration) Exit { return Exit{Time: t0.Add(at), Code: 3, Uptime: 100 * time.Millisecond} }
	long := func(at time.Duration) Exit { return Exit{Time: t0.Add(at), Code: 137, Uptime: time.Hour} }
	cases := map[string]struct {
		exits     []Exit
		now       time.Duration
		delay     time.Duration
		crashLoop bool
	}{
		"first exit restarts at once":     {[]Exit{short(0)}, 0, 0, false},
		"second quick exit waits initial": {[]Exit{short(0), short(2 * time.Second)}, 2 * time.Second, time.Second, false},
		"third doubles":                   {[]Exit{short(0), short(2 * time.Second), short(5 * time.Second)}, 5 * time.Second, 2 * time.Second, false},
		"capped at max":                   {[]Exit{short(0), short(1), short(2), short(3), short(4), short(5), short(6), short(7)}, 8, 30 * time.Second, true},
		"long run resets the count":       {[]Exit{short(0), short(1), short(2), long(time.Hour)}, time.Hour, 0, false},
		"quick exit after a long run":     {[]Exit{short(0), long(time.Hour), short(time.Hour + time.Second)}, time.Hour + time.Second, time.Second, false},
		"crash loop at five in window":    {[]Exit{short(0), short(1), short(2), short(3), short(4)}, 5, 8 * time.Second, true},
		"old exits fall out of window":    {[]Exit{short(0), short(1), short(2), short(3), short(20 * time.Minute)}, 20 * time.Minute, 8 * time.Second, false},
		"exit after long run is not loop": {[]Exit{long(0)}, time.Minute, 0, false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := planRestart(tc.exits, b, cl, t0.Add(tc.now))
			if p.Delay != tc.delay || p.CrashLoop != tc.crashLoop {
				t.Fatalf("plan = %+v, want delay %s crash loop %v", p, tc.delay, tc.crashLoop)
			}
		})
	}
}

func TestTrimExitsKeepsRecent(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var ex []Exit
	for i := 0; i < 100; i++ {
		ex = append(ex, Exit{Time: t0.Add(time.Duration(i) * time.Minute)})
	}
	got := trimExits(ex, 10*time.Minute, t0.Add(100*time.Minute))
	if len(got) < 10 || len(got) > 64 {
		t.Fatalf("kept %d exits", len(got))
	}
	if !got[len(got)-1].Time.Equal(ex[99].Time) {
		t.Fatalf("lost the newest exit")
	}
}
