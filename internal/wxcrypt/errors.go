package wxcrypt

import "errors"

// Every error the package returns matches one of these with errors.Is;
// the wrapping error adds what is wrong (a length, a field name), never a
// secret or the message.
var (
	// ErrBadConfig is returned by New when the token, the EncodingAESKey
	// or the appid cannot be used: an empty or over-long token, a key that
	// is not 43 characters of base64 decoding to 32 bytes, an appid that
	// is not 1 to 64 of [A-Za-z0-9_-].
	ErrBadConfig = errors.New("wxcrypt: bad configuration")

	// ErrTooLarge is returned when a body is over MaxBodySize, or a
	// message to encrypt would make one; nothing else is done with it.
	ErrTooLarge = errors.New("wxcrypt: body too large")

	// ErrMalformed is returned for input that is not what WeChat sends:
	// a body that is not the envelope XML (or has a DOCTYPE, an entity,
	// an element nested too deep, a field twice), a missing Encrypt, an
	// over-long timestamp or nonce, Encrypt that is not base64 or not a
	// whole number of 32-byte blocks, a decrypted length that does not
	// fit, a push whose XML is broken or lacks a field its InfoType needs.
	ErrMalformed = errors.New("wxcrypt: malformed message")

	// ErrBadSignature is returned when msg_signature is not the SHA-1 of
	// the sorted token, timestamp, nonce and Encrypt. Nothing has been
	// decrypted.
	ErrBadSignature = errors.New("wxcrypt: bad msg_signature")

	// ErrBadPadding is returned when the decrypted message does not end
	// in PKCS#7 padding to 32 bytes: a pad value of 0 or over 32, or pad
	// bytes that are not all equal to it.
	ErrBadPadding = errors.New("wxcrypt: bad padding")

	// ErrAppIDMismatch is returned when the appid at the end of the
	// decrypted message, the envelope's AppId or the push's AppId is not
	// the configured appid: a push for another app or component.
	ErrAppIDMismatch = errors.New("wxcrypt: appid mismatch")
)
