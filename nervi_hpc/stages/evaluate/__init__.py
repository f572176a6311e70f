"""The evaluate stage: `measure` (decode every image and compare it with the truth), its
`metrics` (PSNR, MS-SSIM, LPIPS), `colour` (CIELUV ΔE), the contact `sheet`, and the `summary`
it writes (summary.json, summary.md, per_image.csv)."""
