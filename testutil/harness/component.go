package harness

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
	"github.com/tokenkeeper/tokenkeeper/internal/seal"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/testutil"
)

// Component registers an Open Platform component (kind
// wechat-component) with the emulator — AppSecret Secret(appid), a
// callback token and a random EncodingAESKey — and returns its config
// (api_base the emulator) and the keyring of a random secrets key, for
// Config.WithKeyring. Set AuthorizerTickets on the config as the test
// needs.
func (e *Env) Component(name, appid string) (refresher.AppConfig, *seal.Keyring) {
	e.T.Helper()
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	aesKey := strings.TrimRight(base64.StdEncoding.EncodeToString(raw), "=")
	cbToken := "cbtoken-" + appid
	e.Sim.AddComponent(appid, Secret(appid), cbToken, aesKey)
	key := make([]byte, seal.KeySize)
	_, _ = rand.Read(key)
	ring, err := seal.NewKeyring(key)
	if err != nil {
		e.T.Fatalf("harness: keyring: %v", err)
	}
	ac := refresher.AppConfig{Name: name, Kind: refresher.KindWeChatComponent, AppID: appid, APIBase: e.SimURL}.
		WithSecret(Secret(appid)).WithCallbackSecrets(cbToken, aesKey)
	return ac, ring
}

// StartComponent starts a replica with cfg (Start), serves its callback
// handler on an httptest server, pushes a verify ticket to component (a
// configured wechat-component of cfg) and waits until the component's
// token is stored. It returns the replica and the component's callback
// URL, which the emulator's Authorize and Unauthorize push to.
func (e *Env) StartComponent(cfg *refresher.Config, component string, opts ...refresher.Option) (*Replica, string) {
	e.T.Helper()
	var appid string
	for _, a := range cfg.Apps {
		if a.Name == component {
			appid = a.AppID
		}
	}
	if appid == "" {
		e.T.Fatalf("harness: no component %q in the config", component)
	}
	rep := e.Start(cfg, opts...)
	srv := httptest.NewServer(rep.R.CallbackHandler())
	e.T.Cleanup(srv.Close)
	cb := srv.URL + refresher.CallbackPathPrefix + component
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Sim.PushVerifyTicket(ctx, appid, cb); err != nil {
		e.T.Fatalf("harness: push a verify ticket to %s: %v", component, err)
	}
	e.WaitRecord(10*time.Second, component, func(contract.Record, uint64) bool { return true })
	return rep, cb
}

// Ticket reads the ticket record under key (ok false if there is none).
func (e *Env) Ticket(key string) (rec contract.TicketRecord, rev uint64, ok bool) {
	e.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := e.JS.KeyValue(ctx, contract.DefaultBucket)
	if err != nil {
		e.T.Logf("harness: bucket %s: %v", contract.DefaultBucket, err)
		return rec, 0, false
	}
	ent, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return rec, 0, false
	}
	if err != nil {
		e.T.Logf("harness: get %s: %v", key, err)
		return rec, 0, false
	}
	if err := json.Unmarshal(ent.Value(), &rec); err != nil {
		e.T.Fatalf("harness: ticket record of %s does not parse: %v", key, err)
	}
	return rec, ent.Revision(), true
}

// WaitTicket waits up to d for a ticket record under key that satisfies
// cond (nil: any) and returns it.
func (e *Env) WaitTicket(d time.Duration, key string, cond func(contract.TicketRecord, uint64) bool) (contract.TicketRecord, uint64) {
	e.T.Helper()
	var rec contract.TicketRecord
	var rev uint64
	testutil.WaitFor(e.T, d, func() bool {
		r, v, ok := e.Ticket(key)
		if ok && r.Ticket != "" && (cond == nil || cond(r, v)) {
			rec, rev = r, v
			return true
		}
		return false
	}, "ticket record %s did not reach the expected state", key)
	return rec, rev
}
