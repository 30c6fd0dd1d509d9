-- Bearing health from vibration waveforms: envelope analysis at the outer-race defect
-- frequency, with the ISO 10816 velocity and its severity zone beside it.
--
-- Each machine's drive-end accelerometer sends a waveform (m/s², `forewarn simulate`
-- with waveforms: 4,096 samples at 10 kHz once a minute, f32le-encoded) with its
-- sample rate and shaft speed. A spalled outer race is struck by every passing ball:
-- the impacts ring the housing's resonance near 3 kHz, so the signal band-passed to
-- 2-4 kHz has an envelope that pulses at the ball pass frequency (BPFO, from the
-- bearing's geometry: a 6205, 9 balls of 7.94 mm on a 39.04 mm pitch circle). The
-- envelope amplitude at BPFO rises while overall vibration and its kurtosis still sit
-- inside normal variation.

CREATE TABLE vibration (
  site TEXT,
  line TEXT,
  device TEXT,
  ts TIMESTAMP,
  rpm DOUBLE,   -- shaft speed
  fs DOUBLE,    -- sample rate of the waveform, Hz
  wave DOUBLE[], -- acceleration, m/s^2
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) WITH (
  connector = 'mqtt',
  topic = 'plant/+/+/+/telemetry',
  topic_template = 'plant/{site}/{line}/{device}/telemetry',
  format = 'json',
  watermark_key = 'device',
  max_samples = '8192'
);

CREATE TABLE bearing_alerts WITH (
  connector = 'mqtt',
  topic = 'forewarn/bearing/{site}/{device}'
);

-- Five-minute windows (five waveforms). The envelope amplitude of a healthy bearing
-- at BPFO is about 0.03 m/s^2 (noise); 0.1 is a developing defect.
INSERT INTO bearing_alerts
SELECT site, device, window_start, window_end,
       max(envelope_amplitude(wave, fs, 2000, 4000, bpfo(rpm, 9, 7.94, 39.04, 0))) AS outer_race,
       avg(velocity_rms(wave, fs)) AS velocity_mm_s,
       iso_zone(avg(velocity_rms(wave, fs)), 'I') AS iso_zone,
       max(wave_kurtosis(wave)) AS kurtosis
FROM vibration
WHERE wave IS NOT NULL
GROUP BY tumble(interval '5 minutes'), site, device
HAVING outer_race > 0.1;
