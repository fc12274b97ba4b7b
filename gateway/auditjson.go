package gateway

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// appendJSON writes the record as one JSON object. It is hand-written
// because the audit log is on every request's path and encoding/json's
// reflection cost a measurable share of throughput; the test checks that
// encoding/json decodes it to the same record.
func (r *auditRecord) appendJSON(b []byte) []byte {
	b = append(b, `{"time":"`...)
	b = r.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","remote":`...)
	b = appendJSONString(b, r.Remote)
	if r.Identity != "" {
		b = append(b, `,"identity":`...)
		b = appendJSONString(b, r.Identity)
	}
	if r.Auth != "" {
		b = append(b, `,"auth":`...)
		b = appendJSONString(b, r.Auth)
	}
	b = append(b, `,"method":`...)
	b = appendJSONString(b, r.Method)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, r.Path)
	if r.Query != "" {
		b = append(b, `,"query":`...)
		b = appendJSONString(b, r.Query)
	}
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, r.Bytes, 10)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, r.DurationMS, 'f', -1, 64)
	if r.PromptID != "" {
		b = append(b, `,"prompt_id":`...)
		b = appendJSONString(b, r.PromptID)
	}
	if r.Workflow != "" {
		b = append(b, `,"workflow_sha256":`...)
		b = appendJSONString(b, r.Workflow)
	}
	if r.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendJSONString(b, r.Reason)
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s for JSON; invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == '<' || c == '>' || c == '&' || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
