package refresher

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// maxRecordLifetime is the longest lifetime (expires_at − fetched_at) of
// a record the refresher accepts from the bucket; it writes at most
// contract.MaxTokenLifetime itself.
const maxRecordLifetime = contract.MaxTokenLifetime + contract.LifetimeSlack

// recordGuard remembers which invalid records were reported, so that a
// record read by the watcher, the snapshot and the refresh path raises
// one alert, not three.
type recordGuard struct {
	mu       sync.Mutex
	reported map[string]uint64 // key -> revision last reported
}

// first reports whether the invalid record under key at rev is reported
// for the first time (and remembers it).
func (g *recordGuard) first(key string, rev uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.reported[key] == rev {
		return false
	}
	if g.reported == nil {
		g.reported = map[string]uint64{}
	}
	g.reported[key] = rev
	return true
}

// parseRecord parses and validates the value stored under key at
// revision rev. A value that does not parse or fails
// contract.Record.Validate is treated as missing: parseRecord returns nil
// and logs ALERT invalid_record (once per key and revision) naming the
// key, the revision and what is wrong, never the token.
func (r *Refresher) parseRecord(key string, rev uint64, val []byte) *contract.Record {
	return parseValid[contract.Record](r, key, rev, val, "record", "app", contract.ErrInvalidRecord)
}

// validatable is a stored value that checks itself against its key.
type validatable[T any] interface {
	*T
	Validate(key string, maxLifetime time.Duration) error
}

// parseValid parses val as a T and validates it for key. An invalid one
// is reported (once per key and revision: ALERT invalid_record, the
// alert metric) and treated as missing (nil). what names the value in
// the log line, keyAttr the attribute that carries the key; invalid is
// the error an unparseable value wraps.
func parseValid[T any, P validatable[T]](r *Refresher, key string, rev uint64, val []byte, what, keyAttr string, invalid error) *T {
	var v T
	var err error
	if json.Unmarshal(val, &v) != nil {
		// The decoder's message is not kept: it may quote the value.
		err = fmt.Errorf("%w: the value (%d bytes) is not a JSON %s", invalid, len(val), what)
	} else {
		err = P(&v).Validate(key, maxRecordLifetime)
	}
	if err == nil {
		return &v
	}
	if r.guard.first(key, rev) {
		r.obs.Alert(r.metricLabel(key), AlertInvalidRecord)
		r.log.Error("ALERT invalid_record: the stored "+what+" is not valid; it is treated as missing, never served, and replaced by a new fetch",
			"alert", AlertInvalidRecord, keyAttr, key, "revision", rev, "problem", err.Error())
	}
	return nil
}

// capLifetime is the lifetime written for a token whose upstream
// announced d: at most contract.MaxTokenLifetime, so that every record
// written passes Validate.
func capLifetime(d time.Duration) time.Duration { return min(d, contract.MaxTokenLifetime) }
