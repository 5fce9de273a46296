"""Where the catalogues and images come from: synthetic, galaxyzoo (download), local, manifest."""
