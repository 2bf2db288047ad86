// Package email is the "email" action: it sends one message per event
// through the SMTP server of the [smtp] section, with recipients, subject
// and body rendered from templates over the event. Without that section
// the config is refused at validate time (Config.CheckConfig).
//
// A new SMTP connection is opened for every message, so the action is
// safe for concurrent use and holds nothing between events. SMTP 5xx
// answers are permanent errors, 4xx answers and network failures are
// transient.
package email
