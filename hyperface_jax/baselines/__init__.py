"""What packing is compared against: other identity samplers (`samplers`), closed-form
spherical codes (`codes`) and the paper-literal dense implementation (`dense_baseline`)."""
