// Package health holds the severity scale every subsystem uses to say what
// is wrong in its status. It follows the monitoring-plugin convention that
// `zguard status` exits with: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
package health

// Level is a severity; its value is the exit code of `zguard status`.
type Level int

// The levels, in the order of the monitoring-plugin convention.
const (
	OK       Level = 0
	Warning  Level = 1
	Critical Level = 2
	Unknown  Level = 3
)

func (l Level) String() string {
	switch l {
	case OK:
		return "OK"
	case Warning:
		return "WARNING"
	case Critical:
		return "CRITICAL"
	}
	return "UNKNOWN"
}

// MarshalText writes the level's name.
func (l Level) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText reads a level's name.
func (l *Level) UnmarshalText(b []byte) error {
	switch string(b) {
	case "OK":
		*l = OK
	case "WARNING":
		*l = Warning
	case "CRITICAL":
		*l = Critical
	default:
		*l = Unknown
	}
	return nil
}

// Finding is one thing an operator should know about.
type Finding struct {
	Level     Level  `json:"level"`
	Subsystem string `json:"subsystem"`
	Msg       string `json:"message"`
}

// Warn and Crit build findings.
func Warn(subsystem, msg string) Finding { return Finding{Warning, subsystem, msg} }

// Crit builds a critical finding.
func Crit(subsystem, msg string) Finding { return Finding{Critical, subsystem, msg} }

// Worst returns the highest level among findings (OK when there are none).
func Worst(fs []Finding) Level {
	w := OK
	for _, f := range fs {
		if f.Level > w {
			w = f.Level
		}
	}
	return w
}
