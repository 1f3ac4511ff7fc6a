package refresher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// Operator requests on the authorizers of a wechat-component
// (contract.AuthorizersSubject, tokenctl authorizers): the leader serves
// the micro service contract.AdminServiceName while it leads, only when a
// component is configured (a v1 deployment's permissions need no
// change). NATS permissions decide who may ask: the operator role
// publishes on token.admin.>, services are denied it. The requests read
// and write the secrets bucket here, in the refresher, the only holder of
// the secrets key; replies carry fingerprints, never a token, except an
// export that asked for refresh tokens (logged and audited).

// adminConcurrency bounds the operator requests handled at once; past it
// a request gets a 503.
const adminConcurrency = 4

// adminSnapTTL is how long a list or export snapshot (the cursor of its
// pages) lives after its last page; adminSnapMax how many are kept.
const (
	adminSnapTTL  = 5 * time.Minute
	adminSnapMax  = 8
	adminPageSize = 500
)

// adminState is the leader's state of the operator service.
type adminState struct {
	mu    sync.Mutex
	svc   micro.Service
	sem   chan struct{}
	snaps map[string]*adminSnap
}

// adminSnap is one list or export: the authorizers of a component as the
// secrets bucket held them at the first page, sorted by appid. An export
// snapshot keeps the sealed values (opened page by page), a list snapshot
// only what list shows.
type adminSnap struct {
	component string
	export    bool
	tokens    bool // an export with refresh tokens
	entries   []snapEntry
	used      time.Time
}

type snapEntry struct {
	appid  string
	key    string
	sealed []byte                  // export only
	info   contract.AuthorizerInfo // list only
}

// startAdmin registers the operator service (the leader, with a
// component).
func (r *Refresher) startAdmin() error {
	if !r.cfg.hasComponents() || r.secrets == nil {
		return nil
	}
	r.admin.mu.Lock()
	defer r.admin.mu.Unlock()
	if r.admin.svc != nil {
		return nil
	}
	if r.admin.sem == nil {
		r.admin.sem = make(chan struct{}, adminConcurrency)
	}
	svc, err := micro.AddService(r.nc, micro.Config{
		Name:        contract.AdminServiceName,
		Version:     Version,
		Description: "tokenkeeper operator requests (tokenctl authorizers)",
		Metadata:    map[string]string{"replica": r.id, "bucket": r.cfg.Bucket},
		ErrorHandler: func(_ micro.Service, e *micro.NATSError) {
			r.log.Warn("token.admin service error", "subject", sanitize(e.Subject, maxLoggedSubject), "error", sanitize(e.Description, 512))
		},
	})
	if err != nil {
		return err
	}
	err = svc.AddEndpoint("authorizers", micro.HandlerFunc(r.handleAdmin),
		micro.WithEndpointSubject(contract.AdminPrefix+"authorizers.>"),
		// The leader only subscribes (see startService).
		micro.WithEndpointQueueGroupDisabled())
	if err != nil {
		_ = svc.Stop()
		return err
	}
	r.admin.svc = svc
	return nil
}

// stopAdmin unregisters the operator service and drops the snapshots.
func (r *Refresher) stopAdmin() {
	r.admin.mu.Lock()
	svc := r.admin.svc
	r.admin.svc, r.admin.snaps = nil, nil
	r.admin.mu.Unlock()
	if svc != nil {
		_ = svc.Stop()
	}
}

// handleAdmin runs on the endpoint's subscription: it never blocks, the
// work runs on a goroutine of its own (at most adminConcurrency).
func (r *Refresher) handleAdmin(req micro.Request) {
	if !r.Leader() {
		return // a deposed leader stays silent: the leader answers
	}
	q := &refreshReq{Request: req, send: r.nc.PublishMsg}
	rest := strings.TrimPrefix(req.Subject(), contract.AdminPrefix+"authorizers.")
	op, comp, _ := strings.Cut(rest, ".")
	if op == "" || comp == "" || strings.Contains(comp, ".") {
		sendError(q, badRequest("subject %q is not token.admin.authorizers.<op>.<component>", sanitize(req.Subject(), maxLoggedSubject)))
		return
	}
	c := r.componentOf(comp)
	if c == nil {
		sendError(q, &RequestError{Code: contract.CodeNotFound, Message: fmt.Sprintf("%q is no wechat-component app", truncate(sanitize(comp, 80), 64))})
		return
	}
	select {
	case r.admin.sem <- struct{}{}:
	default:
		sendError(q, &RequestError{Code: contract.CodeUnavailable, Message: "busy with other operator requests; try again"})
		return
	}
	who := requesterOf(nats.Header(req.Headers()))
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() { <-r.admin.sem }()
		defer func() {
			if p := recover(); p != nil {
				r.log.Error("operator request panicked", "subject", sanitize(req.Subject(), maxLoggedSubject),
					"panic", sanitize(fmt.Sprint(p), 512), "stack", string(debug.Stack()))
				if !q.answered.Load() {
					sendError(q, &RequestError{Code: contract.CodeInternal, Message: "internal error (logged)"})
				}
			}
		}()
		ctx, cancel := context.WithTimeout(withRequester(r.refreshCtx, who), 10*time.Minute)
		defer cancel()
		reply, err := r.adminOp(ctx, c, op, req.Data())
		if err != nil {
			sendError(q, err)
			return
		}
		b, err := json.Marshal(reply)
		if err != nil {
			sendError(q, err)
			return
		}
		_ = q.Respond(b)
	}()
}

// adminOp runs one operator request and returns its reply.
func (r *Refresher) adminOp(ctx context.Context, c *component, op string, body []byte) (any, error) {
	switch op {
	case contract.AuthorizersList, contract.AuthorizersExport:
		var pr contract.PageRequest
		if err := decodeAdmin(body, &pr); err != nil {
			return nil, err
		}
		return r.adminPage(ctx, c, op == contract.AuthorizersExport, pr)
	case contract.AuthorizersShow:
		var sr contract.ShowRequest
		if err := decodeAdmin(body, &sr); err != nil {
			return nil, err
		}
		return r.adminShow(ctx, c, sr.AuthorizerAppID)
	case contract.AuthorizersImport:
		var ir contract.ImportRequest
		if err := decodeAdmin(body, &ir); err != nil {
			return nil, err
		}
		return r.adminImport(ctx, c, ir)
	case contract.AuthorizersReconcile:
		rep, err := r.Reconcile(ctx, c.name)
		switch {
		case errors.Is(err, errNoToken):
			return nil, &RequestError{Code: contract.CodeUnavailable, Message: "the component holds no valid component_access_token yet (no verify ticket pushed?)", Err: err}
		case errors.Is(err, ErrNotLeader):
			return nil, &RequestError{Code: contract.CodeUnavailable, Message: "this replica no longer leads; try again", Err: err}
		case err != nil:
			return nil, &RequestError{Code: contract.CodeUpstream, Message: "reconciliation failed: " + err.Error(), Err: err}
		}
		return rep, nil
	}
	return nil, &RequestError{Code: contract.CodeNotFound, Message: fmt.Sprintf("no operation %q (list, show, import, export, reconcile)", truncate(sanitize(op, 80), 40))}
}

// decodeAdmin decodes a request body (empty: the zero value).
func decodeAdmin(body []byte, v any) error {
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		// The JSON error may quote the body (a refresh token): never.
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return badRequest("request body is not valid JSON (at byte %d)", se.Offset)
		}
		return badRequest("request body does not have the request's shape")
	}
	return nil
}

// adminPage answers one page of a list (export false) or an export.
func (r *Refresher) adminPage(ctx context.Context, c *component, export bool, pr contract.PageRequest) (any, error) {
	limit := pr.Limit
	if limit <= 0 {
		limit = adminPageSize
	}
	if limit > contract.MaxAdminPage || pr.Offset < 0 {
		return nil, badRequest("limit must be 1 to %d and offset not negative", contract.MaxAdminPage)
	}
	var snap *adminSnap
	cursor := pr.Cursor
	if cursor == "" {
		s, err := r.authorizerSnapshot(ctx, c, export, pr.IncludeRefreshTokens)
		if err != nil {
			return nil, err
		}
		snap, cursor = s, r.keepSnap(s)
		if s.tokens {
			r.refreshTokensExported(ctx, c, len(s.entries))
		}
	} else if snap = r.snapOf(cursor); snap == nil || snap.component != c.name || snap.export != export || snap.tokens != pr.IncludeRefreshTokens {
		return nil, &RequestError{Code: contract.CodeNotFound, Message: "cursor unknown or expired (5 minutes after its last page, or the leader changed): start again"}
	}
	lo := min(pr.Offset, len(snap.entries))
	hi := min(lo+limit, len(snap.entries))
	page := snap.entries[lo:hi]
	if !export {
		out := contract.ListReply{Component: c.name, Cursor: cursor, Total: len(snap.entries), Offset: lo, Authorizers: make([]contract.AuthorizerInfo, 0, len(page))}
		now := r.now()
		for _, e := range page {
			out.Authorizers = append(out.Authorizers, r.authorizerInfo(c, e.info, now))
		}
		return out, nil
	}
	out := contract.ExportReply{Component: c.name, Cursor: cursor, Total: len(snap.entries), Offset: lo, Rows: make([]contract.AuthorizerRow, 0, len(page))}
	for _, e := range page {
		row := contract.AuthorizerRow{AuthorizerAppID: e.appid}
		if snap.tokens {
			var s authorizerSecret
			if err := r.secrets.open(e.key, e.sealed, &s); err != nil {
				return nil, &RequestError{Code: contract.CodeInternal, Message: fmt.Sprintf("the secrets record of %s does not open", e.appid), Err: err}
			}
			row.RefreshToken = s.RefreshToken
		}
		out.Rows = append(out.Rows, row)
	}
	return out, nil
}

// authorizerSnapshot reads every authorizer secrets record of c: for a list all of
// them (tombstones too), for an export the authorized ones.
func (r *Refresher) authorizerSnapshot(ctx context.Context, c *component, export, tokens bool) (*adminSnap, error) {
	s := &adminSnap{component: c.name, export: export, tokens: export && tokens, used: time.Now()}
	prefix := c.name + "." + secretAuthorizer + "."
	var bad []string
	err := r.secrets.each(ctx, prefix+"*", func(key string, rev uint64, sealed []byte) {
		appid := strings.TrimPrefix(key, prefix)
		var sec authorizerSecret
		if err := r.secrets.open(key, sealed, &sec); err != nil {
			bad = append(bad, appid)
			return
		}
		e := snapEntry{appid: appid, key: key}
		if export {
			if sec.State != authorizerAuthorized {
				return
			}
			if s.tokens {
				e.sealed = sealed
			}
		} else {
			e.info = secretInfo(appid, &sec)
		}
		s.entries = append(s.entries, e)
	})
	if err != nil {
		return nil, &RequestError{Code: contract.CodeUnavailable, Message: "reading the secrets bucket failed: " + err.Error(), Err: err}
	}
	if len(bad) > 0 {
		r.log.Error("authorizer secrets records that do not open were left out", "app", c.name, "authorizers", bad)
	}
	slices.SortFunc(s.entries, func(a, b snapEntry) int { return strings.Compare(a.appid, b.appid) })
	return s, nil
}

// secretInfo is what list shows of a secrets record.
func secretInfo(appid string, s *authorizerSecret) contract.AuthorizerInfo {
	info := contract.AuthorizerInfo{AuthorizerAppID: appid, State: contract.AuthorizerActive,
		RefreshTokenAt: s.UpdatedAt, RefreshTokenSource: s.Source}
	if s.RefreshToken != "" {
		info.RefreshToken = contract.Fingerprint(s.RefreshToken)
	}
	if s.State == authorizerUnauthorized {
		info.State, info.Why = contract.AuthorizerUnauthorized, s.Why
	}
	return info
}

// authorizerInfo completes info with what the leader holds of the
// authorizer: its token's times, needs re-authorization, last error.
func (r *Refresher) authorizerInfo(c *component, info contract.AuthorizerInfo, now time.Time) contract.AuthorizerInfo {
	if info.State == contract.AuthorizerUnauthorized {
		return info
	}
	au := c.get(info.AuthorizerAppID)
	if au == nil {
		return info
	}
	st := au.status(now)
	info.ExpiresAt, info.FetchedAt, info.LastError = st.ExpiresAt, st.FetchedAt, st.LastError
	if st.NeedsReauthorization {
		info.State = contract.AuthorizerNeedsReauthorization
	}
	return info
}

// keepSnap stores s under a new cursor, dropping expired snapshots and,
// past adminSnapMax, the least recently used.
func (r *Refresher) keepSnap(s *adminSnap) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	r.admin.mu.Lock()
	defer r.admin.mu.Unlock()
	if r.admin.snaps == nil {
		r.admin.snaps = map[string]*adminSnap{}
	}
	now := time.Now()
	for k, v := range r.admin.snaps {
		if now.Sub(v.used) > adminSnapTTL {
			delete(r.admin.snaps, k)
		}
	}
	for len(r.admin.snaps) >= adminSnapMax {
		oldest := ""
		for k, v := range r.admin.snaps {
			if oldest == "" || v.used.Before(r.admin.snaps[oldest].used) {
				oldest = k
			}
		}
		delete(r.admin.snaps, oldest)
	}
	r.admin.snaps[id] = s
	return id
}

// snapOf returns the live snapshot of cursor (nil if none).
func (r *Refresher) snapOf(cursor string) *adminSnap {
	r.admin.mu.Lock()
	defer r.admin.mu.Unlock()
	s := r.admin.snaps[cursor]
	if s == nil || time.Since(s.used) > adminSnapTTL {
		return nil
	}
	s.used = time.Now()
	return s
}

// refreshTokensExported logs an export of refresh tokens (who, how many)
// and appends it to the audit trail.
func (r *Refresher) refreshTokensExported(ctx context.Context, c *component, n int) {
	who := requesterFrom(ctx)
	r.log.Warn("refresh tokens exported (tokenctl authorizers export --include-refresh-tokens)",
		"app", c.name, "count", n, "requester", who, "replica", r.id)
	if r.audit != nil {
		r.audit.add(contract.AuditRecord{Time: r.now().UTC(), Replica: r.id, App: c.name, Key: c.name, Kind: KindWeChatComponent,
			Endpoint: contract.AuthorizersSubject(contract.AuthorizersExport, c.name), Attempt: 1,
			Reason: contract.ReasonExport, Requester: who, OK: true, Count: n})
	}
}

// adminShow answers a show request: the authorizer and the history of
// its secrets record.
func (r *Refresher) adminShow(ctx context.Context, c *component, appid string) (any, error) {
	if !contract.ValidAppName(appid) {
		return nil, badRequest("authorizer_appid %q is not 1-64 of A-Z a-z 0-9 _ -", truncate(sanitize(appid, 80), 64))
	}
	key := authorizerSecretKey(c.name, appid)
	hist, err := r.secrets.kv.History(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, &RequestError{Code: contract.CodeNotFound, Message: fmt.Sprintf("component %s has no authorizer %s", c.name, appid)}
	}
	if err != nil {
		return nil, &RequestError{Code: contract.CodeUnavailable, Message: "reading the secrets bucket failed: " + err.Error(), Err: err}
	}
	out := contract.ShowReply{Component: c.name}
	var last *authorizerSecret
	for _, e := range hist {
		v := contract.RefreshTokenVersion{Revision: e.Revision(), StoredAt: e.Created().UTC()}
		if e.Operation() != jetstream.KeyValuePut {
			v.State = "deleted"
			out.History = append(out.History, v)
			continue
		}
		var s authorizerSecret
		if err := r.secrets.open(key, e.Value(), &s); err != nil {
			v.State = "does not open"
			out.History = append(out.History, v)
			continue
		}
		v.State, v.Source = s.State, s.Source
		if s.RefreshToken != "" {
			v.RefreshToken = contract.Fingerprint(s.RefreshToken)
		}
		out.History = append(out.History, v)
		last = &s
	}
	if last == nil {
		return nil, &RequestError{Code: contract.CodeNotFound, Message: fmt.Sprintf("component %s has no readable record of authorizer %s", c.name, appid)}
	}
	out.Info = r.authorizerInfo(c, secretInfo(appid, last), r.now())
	return out, nil
}

// adminImport stores the refresh tokens of an import request, row by
// row, revision-checked; the imported authorizers are then fetched
// through the ordinary planner (concurrency slots, pacing).
func (r *Refresher) adminImport(ctx context.Context, c *component, ir contract.ImportRequest) (any, error) {
	if len(ir.Rows) > contract.MaxAdminPage {
		return nil, badRequest("%d rows in one request, over the limit of %d: send them in chunks", len(ir.Rows), contract.MaxAdminPage)
	}
	now := r.now()
	madeAt := ir.MadeAt
	if ir.Overwrite && madeAt.IsZero() {
		return nil, badRequest("overwrite needs made_at, when the import file was made")
	}
	if madeAt.After(now) {
		madeAt = now // a file from the future beats nothing stored
	}
	out := contract.ImportReply{Component: c.name, Results: make([]contract.ImportResult, 0, len(ir.Rows))}
	seen := map[string]int{}
	counts := map[string]int{}
	for _, row := range ir.Rows {
		// An invalid appid is not echoed: a file with its columns
		// swapped holds a refresh token there.
		res := contract.ImportResult{Line: row.Line, Outcome: contract.ImportInvalid}
		if contract.ValidAppName(row.AuthorizerAppID) {
			res.AuthorizerAppID = row.AuthorizerAppID
		}
		if err := contract.CheckAuthorizerRow(row); err != nil {
			res.Reason = err.Error()
		} else if prev, dup := seen[row.AuthorizerAppID]; dup {
			res.Reason = fmt.Sprintf("duplicate of line %d", prev)
		} else {
			seen[row.AuthorizerAppID] = row.Line
			res = r.importRow(ctx, c, row, ir.Overwrite, madeAt)
		}
		counts[res.Outcome]++
		out.Results = append(out.Results, res)
	}
	r.log.Info("authorizers imported", "app", c.name, "rows", len(ir.Rows), "imported", counts[contract.ImportImported],
		"skipped", counts[contract.ImportSkipped], "unchanged", counts[contract.ImportUnchanged], "invalid", counts[contract.ImportInvalid],
		"failed", counts[contract.ImportFailed], "requester", requesterFrom(ctx))
	r.Tick()
	return out, nil
}

// importRow stores one valid row unless the store has a refresh token
// for it that the row must not replace.
func (r *Refresher) importRow(ctx context.Context, c *component, row contract.AuthorizerRow, overwrite bool, madeAt time.Time) contract.ImportResult {
	res := contract.ImportResult{Line: row.Line, AuthorizerAppID: row.AuthorizerAppID}
	key := authorizerSecretKey(c.name, row.AuthorizerAppID)
	for range 5 {
		var cur authorizerSecret
		rev, err := r.secrets.get(ctx, key, &cur)
		switch {
		case errors.Is(err, errNoSecret):
		case err != nil && rev == 0:
			res.Outcome, res.Reason = contract.ImportFailed, "reading the store failed: "+err.Error()
			return res
		case err != nil:
			res.Outcome, res.Reason = contract.ImportSkipped, "the stored record does not open (secrets key?): left as it is"
			return res
		case cur.RefreshToken == row.RefreshToken && cur.State == authorizerAuthorized:
			res.Outcome, res.Reason = contract.ImportUnchanged, "the same refresh token is stored"
			return res
		case !overwrite && cur.State == authorizerUnauthorized:
			res.Outcome, res.Reason = contract.ImportSkipped, "unauthorized: the store keeps a tombstone of "+cur.UpdatedAt.UTC().Format(time.RFC3339)+" (--overwrite replaces it if the file is newer)"
			return res
		case !overwrite:
			res.Outcome, res.Reason = contract.ImportSkipped, "exists: the store has a refresh token (--overwrite replaces it if the file is newer)"
			return res
		case !cur.UpdatedAt.Before(madeAt):
			res.Outcome, res.Reason = contract.ImportSkipped, fmt.Sprintf("newer: the stored refresh token (%s) was stored at %s, after the file was made (%s)",
				cur.Source, cur.UpdatedAt.UTC().Format(time.RFC3339), madeAt.UTC().Format(time.RFC3339))
			return res
		}
		sec := authorizerSecret{AuthorizerAppID: row.AuthorizerAppID, RefreshToken: row.RefreshToken, State: authorizerAuthorized,
			UpdatedAt: r.now().UTC(), Source: "import"}
		_, err = r.secrets.put(ctx, key, sec, rev)
		if conflict(err) {
			continue // stored meanwhile: decide again
		}
		if err != nil {
			res.Outcome, res.Reason = contract.ImportFailed, "storing failed: "+err.Error()
			return res
		}
		r.authorizerSecretChanged(c, row.AuthorizerAppID, &sec)
		res.Outcome = contract.ImportImported
		return res
	}
	res.Outcome, res.Reason = contract.ImportFailed, "too many revision conflicts"
	return res
}
