// Package slack is the "slack" action: it posts a message, rendered from
// a template over the event, to a Slack incoming webhook. It shares the
// webhook action's SSRF guard and its classification of answers.
package slack
