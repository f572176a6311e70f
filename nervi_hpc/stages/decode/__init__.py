"""The decode stage: `decoder` (an archive → its model → images of any parameter rows) and
`outputs` (decoded images → an image file, a folder of PNGs, a renders store, a Cinema database)."""
