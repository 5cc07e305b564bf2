"""Loopback fakes of the providers Switchboard sends through, driven by the real SDK clients.

`twilio_api.FakeTwilio`, `slack_api.FakeSlack`, `smtp.FakeSMTP`, `webhook_receiver.WebhookReceiver`;
the shared HTTP server and fault script are in `_http`. Provider facts:
`../shared/notes/outbound-providers.md`. Fakes live here, never in the product.
"""
