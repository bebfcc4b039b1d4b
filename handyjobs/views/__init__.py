"""Words and pictures: tables, show, top, plot, curves; no state changes here."""
