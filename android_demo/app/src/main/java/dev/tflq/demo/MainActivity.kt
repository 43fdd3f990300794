package dev.tflq.demo

import android.app.Activity
import android.graphics.BitmapFactory
import android.os.Bundle
import android.widget.Button
import android.widget.ImageView
import android.widget.TextView

/** Classifies the bundled sample images one by one: label, confidence and latency. */
class MainActivity : Activity() {
    private lateinit var classifier: Classifier
    private var samples: List<String> = emptyList()
    private var next = 0

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        classifier = Classifier(this)
        samples = assets.list(Classifier.SAMPLES_DIR)?.sorted().orEmpty()
        findViewById<TextView>(R.id.model_info).text =
            getString(R.string.model_info, Classifier.MODEL_ASSET, classifier.inputType.toString())
        findViewById<Button>(R.id.classify).setOnClickListener { classifyNext() }
        classifyNext()
    }

    private fun classifyNext() {
        val result = findViewById<TextView>(R.id.result)
        if (samples.isEmpty()) {
            result.setText(R.string.no_samples)
            return
        }
        val name = samples[next % samples.size]
        next += 1
        val bitmap = assets.open("${Classifier.SAMPLES_DIR}/$name").use { BitmapFactory.decodeStream(it) }
        findViewById<ImageView>(R.id.sample).setImageBitmap(bitmap)
        val prediction = classifier.classify(bitmap)
        result.text = getString(R.string.result, name, prediction.label,
            prediction.confidence * 100f, prediction.latencyMs)
    }

    override fun onDestroy() {
        classifier.close()
        super.onDestroy()
    }
}
