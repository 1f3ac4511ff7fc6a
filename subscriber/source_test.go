package subscriber_test

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/subscriber"
	"github.com/tokenkeeper/tokenkeeper/testutil"
	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

func TestTokenIsTheStoredRecord(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, _ := logBuffer(t)
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log))

	rec, rev, ok := w.Record(contract.DefaultBucket, "mp-main")
	if !ok {
		t.Fatal("no record stored")
	}
	tok, err := src.Token()
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	if tok.AccessToken != rec.AccessToken || tok.Revision != rev || tok.App != "mp-main" ||
		!tok.ExpiresAt.Equal(rec.ExpiresAt) || !tok.FetchedAt.Equal(rec.FetchedAt) || tok.Source != rec.Source ||
		tok.AppID != rec.AppID {
		t.Fatalf("Token %+v does not match the record %+v at revision %d", *tok, rec, rev)
	}
	if err := w.Sim.Check(tok.AccessToken); err != nil {
		t.Errorf("the token is not valid upstream: %v", err)
	}
	if s, err := src.AccessToken(); err != nil || s != rec.AccessToken {
		t.Errorf("AccessToken = %q, %v", s, err)
	}
	if src.Revision() != rev || !src.ExpiresAt().Equal(rec.ExpiresAt) || !src.Fresh() || src.App() != "mp-main" {
		t.Errorf("Revision %d ExpiresAt %v Fresh %v App %q", src.Revision(), src.ExpiresAt(), src.Fresh(), src.App())
	}
	if !tok.Valid() || !tok.ValidAt(rec.ExpiresAt.Add(-time.Nanosecond)) || tok.ValidAt(rec.ExpiresAt) {
		t.Error("Valid/ValidAt disagree with expires_at")
	}
	var nilTok *subscriber.Token
	if nilTok.Valid() || (&subscriber.Token{ExpiresAt: time.Now().Add(time.Hour)}).Valid() {
		t.Error("a nil or empty token is valid")
	}

	// The fast path: no allocation.
	if n := testing.AllocsPerRun(1000, func() { _, _ = src.Token() }); n != 0 {
		t.Errorf("Token allocates %v times per call", n)
	}
}

func TestTokenNeverPrintsTheToken(t *testing.T) {
	tok := &subscriber.Token{App: "mp-main", AccessToken: "ACCESS-TOKEN-VALUE-123456", Revision: 7,
		ExpiresAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	var b strings.Builder
	log := slogTo(&b)
	log.Info("x", "token", tok)
	for _, s := range []string{tok.String(), tok.GoString(), sprintf("%v %+v %#v %s", tok, tok, tok, tok), b.String()} {
		if strings.Contains(s, tok.AccessToken) {
			t.Errorf("printed the token: %s", s)
		}
		if !strings.Contains(s, contract.Fingerprint(tok.AccessToken)) {
			t.Errorf("no fingerprint in %q", s)
		}
	}
	if got, want := tok.String(), "mp-main@7 (token "+contract.Fingerprint(tok.AccessToken)+", expires 2030-01-02T03:04:05Z)"; got != want {
		t.Errorf("String = %q, want %q (same fingerprint as the refresher's)", got, want)
	}
}

func TestNewSourceTimesOutClearly(t *testing.T) {
	w := newWorld(t, wechatsim.Options{})
	log, _ := logBuffer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	src, err := subscriber.NewSource(ctx, w.NC, "mp-main", subscriber.WithLogger(log), subscriber.WithBackoff(20*time.Millisecond, 100*time.Millisecond))
	took := time.Since(start)
	if src != nil || err == nil {
		t.Fatalf("NewSource without a refresher = %v, %v; want an error", src, err)
	}
	if !errors.Is(err, subscriber.ErrNoToken) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not match ErrNoToken and DeadlineExceeded", err)
	}
	for _, want := range []string{"mp-main", `bucket "tokens" does not exist yet`, "no refresher answered"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if took > 2*time.Second {
		t.Errorf("NewSource took %s with a 300ms ctx", took)
	}
	t.Logf("error: %v", err)
}

func TestNewSourceRejectsBadArguments(t *testing.T) {
	ctx := context.Background()
	for name, c := range map[string]struct {
		nc   *nats.Conn
		app  string
		opts []subscriber.Option
	}{
		"nil conn":       {nil, "a", nil},
		"bad app":        {&nats.Conn{}, "a b", nil},
		"wildcard key":   {&nats.Conn{}, "a.>", nil},
		"empty segment":  {&nats.Conn{}, "a..b", nil},
		"empty app":      {&nats.Conn{}, "", nil},
		"bad bucket":     {&nats.Conn{}, "a", []subscriber.Option{subscriber.WithBucket("x.y")}},
		"zero poll":      {&nats.Conn{}, "a", []subscriber.Option{subscriber.WithPollInterval(0)}},
		"bad backoff":    {&nats.Conn{}, "a", []subscriber.Option{subscriber.WithBackoff(time.Second, time.Millisecond)}},
		"zero timeout":   {&nats.Conn{}, "a", []subscriber.Option{subscriber.WithRequestTimeout(0)}},
		"nil logger":     {&nats.Conn{}, "a", []subscriber.Option{subscriber.WithLogger(nil)}},
		"nil clock func": {&nats.Conn{}, "a", []subscriber.Option{subscriber.WithClock(nil)}},
	} {
		src, err := subscriber.NewSource(ctx, c.nc, c.app, c.opts...)
		if src != nil || !errors.Is(err, subscriber.ErrInvalidArgument) {
			t.Errorf("%s: NewSource = %v, %v; want ErrInvalidArgument", name, src, err)
		}
	}
}

func TestCloseIsIdempotentAndEverythingSaysClosed(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, _ := logBuffer(t)
	var calls sync.WaitGroup
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log), subscriber.WithOnUpdate(func(*subscriber.Token) {}))
	updated := src.Updated()
	l := src.Listen()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A waiter that is pending while Close runs.
	waitErr := make(chan error, 1)
	calls.Add(1)
	go func() { defer calls.Done(); waitErr <- src.WaitUntilUpdated(ctx) }()

	if err := src.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := src.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	calls.Wait()
	if err := <-waitErr; !errors.Is(err, subscriber.ErrClosed) {
		t.Errorf("pending WaitUntilUpdated = %v, want ErrClosed", err)
	}
	select {
	case <-updated:
	default:
		t.Error("a channel from Updated is still open after Close")
	}
	select {
	case <-src.Updated():
	default:
		t.Error("Updated after Close returns an open channel")
	}
	if tok, err := src.Token(); tok != nil || !errors.Is(err, subscriber.ErrClosed) {
		t.Errorf("Token after Close = %v, %v", tok, err)
	}
	if s, err := src.AccessToken(); s != "" || !errors.Is(err, subscriber.ErrClosed) {
		t.Errorf("AccessToken after Close = %q, %v", s, err)
	}
	if _, err := src.Refresh(ctx, 0); !errors.Is(err, subscriber.ErrClosed) {
		t.Errorf("Refresh after Close: %v", err)
	}
	if err := src.WaitUntilUpdated(ctx); !errors.Is(err, subscriber.ErrClosed) {
		t.Errorf("WaitUntilUpdated after Close: %v", err)
	}
	if _, err := l.Next(ctx); !errors.Is(err, subscriber.ErrClosed) {
		t.Errorf("Listener.Next after Close: %v", err)
	}
	if src.Fresh() || src.Revision() != 0 || !src.ExpiresAt().IsZero() {
		t.Errorf("after Close: Fresh %v Revision %d ExpiresAt %v", src.Fresh(), src.Revision(), src.ExpiresAt())
	}
	c := &http.Client{Transport: src.RoundTripper(nil)}
	if _, err := c.Get(w.SimURL + wechatsim.PathCallbackIP); !errors.Is(err, subscriber.ErrClosed) {
		t.Errorf("RoundTrip after Close: %v", err)
	}
}

func TestConcurrentReadsWhileUpdating(t *testing.T) {
	w := newWorld(t, wechatsim.Options{ExpiresIn: time.Hour})
	w.start()
	log, _ := logBuffer(t)
	src := newSource(t, w.NC, "mp-main", subscriber.WithLogger(log))
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			var last uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				tok, err := src.Token()
				if err != nil || tok.Revision < last {
					t.Errorf("Token = %v, %v after revision %d", tok, err, last)
					return
				}
				last = tok.Revision
				runtime.Gosched() // 4 spinning readers on 2 cores
			}
		}()
	}
	for range 5 {
		rev, _ := bump(t, w, w.NC)
		testutil.WaitFor(t, 5*time.Second, func() bool { return src.Revision() >= rev }, "Source did not reach %d", rev)
	}
	close(stop)
	readers.Wait()
}

func TestNewSourceOnAClosedConnection(t *testing.T) {
	s := testutil.RunServer(t)
	nc, _ := testutil.Connect(t, s.ClientURL())
	nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	log, _ := logBuffer(t)
	start := time.Now()
	src, err := subscriber.NewSource(ctx, nc, "mp-main", subscriber.WithLogger(log))
	if src != nil || !errors.Is(err, subscriber.ErrNoToken) || !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("NewSource on a closed connection = %v, %v", src, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %s", d)
	}
}
