"""Other systems' wire formats, each written once: the key names, separators and payload layouts
that kombu's Redis transport, RQ and gocraft/work (Harbor's job service) use. The exporter
counts with them and the remediator repairs with them, so the two can never disagree."""
