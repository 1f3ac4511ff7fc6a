package natsconf

// CheckServerVersion exposes checkServerVersion to the external tests.
var CheckServerVersion = checkServerVersion
