"""What Painpath's services share: the event contract, settings, logging, topics and plumbing."""
