// Package wxcrypt is WeChat's callback message crypto (the algorithm of
// Tencent's WXBizMsgCrypt samples), as the Open Platform callback and
// the emulator's push driver use it. Standard library only.
//
// A push is an HTTP POST whose query carries msg_signature, timestamp and
// nonce and whose body is an envelope
//
//	<xml><AppId>…</AppId><Encrypt>…</Encrypt></xml>
//
// (an Official Account's messages carry ToUserName instead of AppId).
// Reading one, [Crypter.Open] does, in this order and before any other
// work of the next step:
//
//  1. refuse a body over [MaxBodySize] ([ErrTooLarge]);
//  2. parse the envelope ([ErrMalformed]);
//  3. check msg_signature = hex(SHA-1(sorted(token, timestamp, nonce,
//     Encrypt) concatenated)), compared in constant time
//     ([ErrBadSignature]) — nothing is decrypted before this holds;
//  4. base64-decode Encrypt and decrypt it with AES-256-CBC, the key being
//     the EncodingAESKey (43 characters of base64, "=" appended) and the
//     IV its first 16 bytes;
//  5. strip PKCS#7 padding to a 32-byte block (pad value 1..32, every pad
//     byte equal; [ErrBadPadding]);
//  6. split random(16) | length(4, big-endian) | message | appid, the
//     length fitting ([ErrMalformed]) and the appid being the configured
//     one ([ErrAppIDMismatch]).
//
// [Crypter.OpenComponentPush] then parses the message as an Open Platform
// component push ([ComponentPush]). [Crypter.Seal] is the other direction,
// for the emulator: it encrypts a message (16 random bytes from
// crypto/rand) and returns the envelope and its msg_signature.
//
// Errors name what is wrong, never the token, the key, the ciphertext or
// the decrypted message: a push carries verify tickets and authorization
// codes.
package wxcrypt
