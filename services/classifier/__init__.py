"""The refractory-pain classifier: its pure core decides one status per patient from the
patient's clinical events, a versioned policy and an instant (`rules.evaluate`)."""
