package config

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written in TOML as a Go duration string
// ("250ms", "6h"). "0" means zero, which each key documents (usually "off").
type Duration time.Duration

// UnmarshalText parses a Go duration string; negative values are rejected.
func (d *Duration) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "0" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q (want e.g. \"250ms\", \"30s\", \"6h\")", s)
	}
	if v < 0 {
		return fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration back in Go syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// ByteSize is a size in bytes, written as an integer or with a unit
// ("512MiB", "64GiB", "2GB"). Binary units are powers of 1024, decimal ones of 1000.
type ByteSize int64

var sizeUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

// ParseByteSize parses "64GiB", "512MB", "1048576".
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty size")
	}
	mult := 1.0
	num := s
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			mult = u.mult
			num = strings.TrimSpace(strings.TrimSuffix(s, u.suffix))
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("invalid size %q (want e.g. \"64GiB\", \"512MiB\")", s)
	}
	total := v * mult
	if total > math.MaxInt64/2 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return ByteSize(total), nil
}

// UnmarshalText parses a size with optional unit.
func (b *ByteSize) UnmarshalText(t []byte) error {
	v, err := ParseByteSize(string(t))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalText writes the size in bytes.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(strconv.FormatInt(int64(b), 10)), nil }

// Limit is a memory threshold: either a percentage of the device's total
// ("90%") or an absolute size ("70GiB").
type Limit struct {
	Percent float64 // 0 < Percent <= 100 when set
	Bytes   ByteSize
}

// UnmarshalText parses "90%" or "70GiB".
func (l *Limit) UnmarshalText(t []byte) error {
	s := strings.TrimSpace(string(t))
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(v) || v <= 0 || v > 100 {
			return fmt.Errorf("invalid percentage %q (want 0%% < x <= 100%%)", s)
		}
		*l = Limit{Percent: v}
		return nil
	}
	v, err := ParseByteSize(s)
	if err != nil {
		return fmt.Errorf("invalid limit %q (want a percentage like \"90%%\" or a size like \"70GiB\")", s)
	}
	if v == 0 {
		return fmt.Errorf("invalid limit %q: must be above zero", s)
	}
	*l = Limit{Bytes: v}
	return nil
}

// MarshalText writes the limit back.
func (l Limit) MarshalText() ([]byte, error) {
	if l.Percent > 0 {
		return []byte(strconv.FormatFloat(l.Percent, 'f', -1, 64) + "%"), nil
	}
	return []byte(strconv.FormatInt(int64(l.Bytes), 10)), nil
}

// IsZero reports whether the limit is unset.
func (l Limit) IsZero() bool { return l.Percent == 0 && l.Bytes == 0 }

// Of resolves the limit against a device's total memory.
func (l Limit) Of(total uint64) uint64 {
	if l.Percent > 0 {
		return uint64(float64(total) * l.Percent / 100)
	}
	return uint64(l.Bytes)
}

// Mode is a permission mode written as an octal string ("0700").
type Mode os.FileMode

// UnmarshalText parses an octal mode; only permission bits are allowed.
func (m *Mode) UnmarshalText(t []byte) error {
	s := strings.TrimSpace(string(t))
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || len(s) < 3 {
		return fmt.Errorf("invalid mode %q (want an octal string like \"0700\")", s)
	}
	if v&^0o777 != 0 {
		return fmt.Errorf("invalid mode %q: only permission bits (0000-0777) are allowed", s)
	}
	*m = Mode(v)
	return nil
}

// MarshalText writes the mode as four octal digits.
func (m Mode) MarshalText() ([]byte, error) { return []byte(fmt.Sprintf("%04o", uint32(m))), nil }

// Perm returns the mode as an os.FileMode.
func (m Mode) Perm() os.FileMode { return os.FileMode(m) }

// GPUSelection chooses GPUs: "all", "none", or a list of device indices.
type GPUSelection struct {
	All     bool
	None    bool
	Indices []int
}

// UnmarshalTOML accepts "all", "none" or an array of non-negative integers.
func (g *GPUSelection) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case string:
		switch x {
		case "all":
			*g = GPUSelection{All: true}
		case "none", "":
			*g = GPUSelection{None: true}
		default:
			return fmt.Errorf("invalid GPU selection %q (want \"all\", \"none\" or a list of indices like [0, 1])", x)
		}
	case []any:
		sel := GPUSelection{}
		seen := map[int]bool{}
		for _, e := range x {
			n, ok := e.(int64)
			if !ok || n < 0 || n > 1024 {
				return fmt.Errorf("invalid GPU index %v (want a non-negative integer)", e)
			}
			if seen[int(n)] {
				return fmt.Errorf("GPU index %d listed twice", n)
			}
			seen[int(n)] = true
			sel.Indices = append(sel.Indices, int(n))
		}
		if len(sel.Indices) == 0 {
			sel.None = true
		}
		*g = sel
	default:
		return fmt.Errorf("invalid GPU selection of type %T (want \"all\", \"none\" or a list of indices)", v)
	}
	return nil
}

// String renders the selection as it would be written in the file.
func (g GPUSelection) String() string {
	switch {
	case g.All:
		return "all"
	case g.None || len(g.Indices) == 0:
		return "none"
	}
	parts := make([]string, len(g.Indices))
	for i, n := range g.Indices {
		parts[i] = strconv.Itoa(n)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// MarshalText renders the selection for JSON and hashing.
func (g GPUSelection) MarshalText() ([]byte, error) { return []byte(g.String()), nil }
