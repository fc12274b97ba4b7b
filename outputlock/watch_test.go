package outputlock

import (
	"encoding/binary"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// rawEvent encodes an inotify event as the kernel does: the name padded
// with NULs to the length it declares.
func rawEvent(wd int32, mask uint32, name string, pad int) []byte {
	nameLen := 0
	if name != "" || pad > 0 {
		nameLen = len(name) + pad
	}
	b := make([]byte, unix.SizeofInotifyEvent+nameLen)
	binary.NativeEndian.PutUint32(b[0:], uint32(wd))
	binary.NativeEndian.PutUint32(b[4:], mask)
	binary.NativeEndian.PutUint32(b[12:], uint32(nameLen))
	copy(b[unix.SizeofInotifyEvent:], name)
	return b
}

func TestParseEvents(t *testing.T) {
	cases := map[string]struct {
		buf     []byte
		want    []event
		wantErr bool
	}{
		"empty": {nil, nil, false},
		"one without name": {rawEvent(1, unix.IN_ATTRIB, "", 0),
			[]event{{wd: 1, mask: unix.IN_ATTRIB}}, false},
		"name padded": {rawEvent(3, unix.IN_CREATE, "x.png", 11),
			[]event{{wd: 3, mask: unix.IN_CREATE, name: "x.png"}}, false},
		"two": {append(rawEvent(1, unix.IN_CREATE, "a", 3), rawEvent(-1, unix.IN_Q_OVERFLOW, "", 0)...),
			[]event{{wd: 1, mask: unix.IN_CREATE, name: "a"}, {wd: -1, mask: unix.IN_Q_OVERFLOW}}, false},
		"short header":  {make([]byte, 7), nil, true},
		"name past end": {rawEvent(1, unix.IN_CREATE, "abc", 5)[:unix.SizeofInotifyEvent+2], nil, true},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := parseEvents(c.buf)
			if (err != nil) != c.wantErr {
				t.Fatalf("err = %v, want error %v", err, c.wantErr)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("events = %+v, want %+v", got, c.want)
			}
		})
	}
}

func FuzzParseEvents(f *testing.F) {
	f.Add(rawEvent(1, unix.IN_CREATE, "out.png", 9))
	f.Add(append(rawEvent(2, unix.IN_ATTRIB, "", 0), rawEvent(2, unix.IN_MOVED_TO, "d", 15)...))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, err := parseEvents(b)
		total := 0
		for _, e := range evs {
			total += unix.SizeofInotifyEvent + len(e.name)
			for i := 0; i < len(e.name); i++ {
				if e.name[i] == 0 {
					t.Fatalf("name %q keeps a NUL", e.name)
				}
			}
		}
		if total > len(b) {
			t.Fatalf("parsed %d bytes out of %d", total, len(b))
		}
		if err == nil && len(b) > 0 && len(evs) == 0 {
			t.Fatalf("no events and no error from %d bytes", len(b))
		}
	})
}
